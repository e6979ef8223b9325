"""Errors the `qwen-mobile` command line reports as usage errors (exit code 2, one line naming the flag)."""


class UsageError(ValueError):
    """A flag value, or a combination of flags, that no input could make valid; the message names the flag."""
