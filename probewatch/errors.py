"""Exception types shared across probewatch; each names what went wrong and what to do."""


class ProbewatchError(Exception):
    """Base class: the CLI prints these as one clear line instead of a traceback."""


class ModelUnavailableError(ProbewatchError):
    """A model could not be provisioned or loaded (offline with nothing cached, bad path, ...)."""


class UnsupportedModelError(ProbewatchError):
    """The model's module layout is not one residual capture knows how to hook."""


class DialogueFormatError(ProbewatchError):
    """A dialogue JSONL line breaks the contract; the message names file and line."""
