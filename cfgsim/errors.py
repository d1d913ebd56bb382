"""Exceptions with messages meant for the user: each names the thing and the reason."""


class CfgsimError(Exception):
    """Base class of every error cfgsim raises on purpose."""


class InputError(CfgsimError, ValueError):
    """Bad input from the user: a file that is not an image, a malformed option, too few images."""


class ModelLoadError(CfgsimError):
    """A model a metric needs (the CLIP image encoder) could not be loaded: no network and no cached
    weights, a missing or unreadable weights file, or the package that provides the model is missing."""
