from tests.unit.fuzz.harness import fuzz_stack

__all__ = ["fuzz_stack"]
