"""Error types shared by the whole package.

``UserError`` is for mistakes the user can fix (a bad flag, a corrupt video, a wrong manifest
field). The CLI turns it into a one-line message and exit code 2; everything else is a bug
and keeps its traceback.
"""


class UserError(ValueError):
    """A problem with the user's input; the message names the file / field / flag."""


class VideoError(UserError):
    """A video that is missing, corrupt, empty or too slow to decode."""


class ManifestError(UserError):
    """A manifest row that does not follow the schema."""


class ConfigError(UserError):
    """A config file or override that does not match the config dataclasses."""


class DiskFullError(UserError):
    """The disk filled while writing; the message names the folder and the file. Whatever was
    half-written is removed, so a rerun (after freeing space) resumes from complete files."""
