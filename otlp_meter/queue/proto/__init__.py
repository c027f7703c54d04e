"""Generated protobuf code for the queue's on-disk records; regenerate with ``proto/generate.sh``."""
