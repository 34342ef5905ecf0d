"""User errors: mistakes in a config, a flag, a path or a file that the user can fix.

Every command-line program reports a `UserError` as one or two lines on stderr and exits with
status 2 (a traceback only with --verbosity>=1); anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
  """A mistake the user can fix; the message names the key/file and says what to do."""
