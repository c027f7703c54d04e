"""Rules engine tests: they read as the rules language spec."""
