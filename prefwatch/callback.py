"""The public face of the metrics callback for a user's own TRL script (it lives in ``prefwatch.train``):

from prefwatch.callback import PrefwatchCallback
"""

from prefwatch.train.callback import PrefwatchCallback

__all__ = ["PrefwatchCallback"]
