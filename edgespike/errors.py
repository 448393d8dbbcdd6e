"""The one exception type for problems a user can fix (bad path, missing extra, unusable camera...)."""


class UserError(Exception):
    """A problem the user can fix. The message is one line: what is wrong and what to do."""


def need_extra(module: str, extra: str) -> UserError:
    """The error for a missing optional dependency."""
    return UserError(f"{module} is not installed: pip install 'edgespike[{extra}]'")
