"""EzPool's test suite (a package, so that worker processes can import its helpers)."""
