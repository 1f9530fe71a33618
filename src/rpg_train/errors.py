"""The one error type for bad user input; everything else is a bug and keeps its traceback."""
from __future__ import annotations


class UserError(ValueError):
    """A bad value given by the user. `str(err)` is one line naming the key and the value,
    e.g. "rpg.params=0 must be ...". Library code raises it with its own argument name as
    the key (`params`); the engine re-keys it into its config group with `under("rpg")`."""

    def __init__(self, key: str, value, reason: str):
        self.key, self.value, self.reason = key, value, reason
        super().__init__(f"{key}={value!r} {reason}")

    def under(self, group: str) -> UserError:
        """The same error with its key inside a config group: `params` -> `rpg.params`."""
        return type(self)(f"{group}.{self.key}", self.value, self.reason)

    @classmethod
    def choice(cls, key: str, value, options, says: str = "is not valid; choose one of"):
        """The one message for a value outside a fixed set: "key='x' is not valid; choose one
        of: a, b". `says` words the part before the options, as each place has always done."""
        return cls(key, value, f"{says}: " + ", ".join(options))

    def __reduce__(self):  # exceptions cross process boundaries (multiprocessing, DDP)
        return type(self), (self.key, self.value, self.reason)


def check_choice(key: str, value, options, says: str = "is not valid; choose one of") -> None:
    """Refuse a value that is not one of `options` (a registry's keys): UserError.choice."""
    if value not in options:
        raise UserError.choice(key, value, options, says)
