"""sandrun: reproducible, verifiable Python bundles run under Landlock and seccomp."""

__version__ = "0.1.0"
