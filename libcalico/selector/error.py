"""The one error the selector package raises for bad input.

``SelectorError`` is a ``ValidationError`` so the runtime maps it to INVALID_ARGUMENT and model
validation can let it propagate unchanged. Its message names the selector, what the parser
expected and the 0-based character position where it looked, e.g.
``invalid selector 'a ==': expected a quoted string at position 4``.
"""

from __future__ import annotations

from libcalico.errors import ValidationError

# Long selectors are cut in messages so one bad policy cannot flood a log line or a terminal.
_MAX_SHOWN = 200


class SelectorError(ValidationError):
    """A selector that does not parse.

    ``selector`` is the text, ``position`` the 0-based character offset of the problem (the
    length of the text when the parser ran out of input) and ``problem`` the bare reason,
    e.g. ``expected a quoted string``. The class-level defaults keep those attributes readable
    on an error rebuilt from gRPC details, which carry only the message.
    """

    selector: str = ""
    position: int = -1
    problem: str = ""

    def __init__(
        self,
        selector: str,
        problem: str,
        position: int,
        *,
        field: str = "",
        resource: str = "",
    ) -> None:
        shown = selector if len(selector) <= _MAX_SHOWN else selector[:_MAX_SHOWN] + "..."
        super().__init__(
            f"invalid selector '{shown}': {problem} at position {position}",
            resource=resource,
            field=field,
        )
        self.selector = selector
        self.position = position
        self.problem = problem

    def in_context(self, *, field: str = "", resource: str = "") -> SelectorError:
        """The same error, with its message prefixed by the resource and field it came from."""
        return SelectorError(
            self.selector, self.problem, self.position, field=field, resource=resource
        )
