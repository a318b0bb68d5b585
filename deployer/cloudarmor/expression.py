"""Cloud Armor's custom rules language: a CEL subset, parsed with cel-python, matched with RE2.

Sources: gcp-facts §3.4 and Google's "Configure custom rules language attributes" page
(https://docs.cloud.google.com/armor/docs/rules-language-reference), which lists the attributes and
operations accepted here. Summary of what this module decides:

- ``parse(source)`` compiles once (lark via cel-python) and rejects, with an ``ExpressionError``:
  syntax errors, attributes the language does not have (``request.body``), functions and methods it
  does not have (``startswith``), ``has()`` on anything but a field or map lookup, a ``matches()``
  pattern RE2 cannot compile or that has capture groups, an ``inIpRange()`` range that is not an IP
  range, and atomic conditions that are not booleans (``request.path.lower()`` alone).
- ``validate(source)`` is ``parse`` plus Cloud Armor's write-time limit: at most five
  subexpressions (§3.4 "An advanced match condition contains an expression with up to five
  subexpressions"). The Compute API and ``deployer check`` both call it.
- ``Expression.subexpressions()`` counts the atomic conditions joined by ``&&`` and ``||``
  (``!`` and parentheses do not add one); ``header_lookups_without_has()`` lists
  ``request.headers['k']`` lookups not guarded by an earlier ``has(request.headers['k'])`` in the
  same ``&&`` chain (§3.4: "Recommended approach is to first check for availability using has()").
- ``Expression.evaluate(request)`` answers whether the rule matches. A missing map key is an
  evaluation *error* in CEL (§3.4: m['k'] "returns an error"); CEL's commutative ``&&``/``||``
  absorb errors where the other side decides, and an expression whose result is still an error is
  treated as **no match** (the rule's action is not taken). Google does not document what a rule
  whose expression errors does; "does not match" is the only reading under which the recommended
  ``has()`` guard is an optimisation rather than a necessity, so we chose it.

Known approximations (doubts, written down):
- ``evaluatePreconfiguredWaf``/``evaluatePreconfiguredExpr``, ``evaluateThreatIntelligence``,
  ``evaluateAddressGroup``, ``evaluateOrganizationAddressGroup``, ``evaluateAdaptiveProtection`` and
  ``evaluateAdaptiveProtectionAutoDeploy`` are recognised so real policies parse, and always
  evaluate to ``false``: we have no WAF signatures, threat feeds or address groups locally.
- reCAPTCHA ``token.*`` attributes parse; locally no request carries a token, so looking one up is
  an evaluation error (Google: "A subexpression based on these attributes returns false if the
  reCAPTCHA token … is not available").
- Google's exact error texts for syntax errors and for the subexpression limit are not recorded
  anywhere we could find; ours start with the prefix Google uses for a bad regex (a real 400,
  kubernetes/k8s.io#6979): "Error parsing Cloud Armor rule matcher expression: …".
- Google's own example ``!request.path.startswith('/login/api/')`` uses a lower-case method that
  the operations table does not list (it lists ``startsWith``); we reject it, with a hint.
"""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
import re
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import celpy
import lark
import re2
from celpy import celtypes

from deployer import facts

# The prefix of Google's 400 for an expression it cannot accept (kubernetes/k8s.io#6979, a real
# error: "Error parsing Cloud Armor rule matcher expression: Invalid regular expression: …, Capture
# Groups are not allowed.").
ERROR_PREFIX = "Error parsing Cloud Armor rule matcher expression: "


class ExpressionError(ValueError):
    """An expression Cloud Armor would refuse. ``message`` is Google-like text, ``detail`` the part
    after Google's prefix, ``position`` the 0-based offset into the source where known."""

    def __init__(self, detail: str, position: int | None = None) -> None:
        self.detail = detail
        self.position = position
        self.message = ERROR_PREFIX + detail
        super().__init__(self.message)


# ---- the language ------------------------------------------------------------------------------
# Attributes (rules-language-reference, "Attributes" and "reCAPTCHA attributes") and their types.
ATTRIBUTES: dict[str, str] = {
    "request.headers": "map",
    "request.method": "string",
    "request.path": "string",
    "request.scheme": "string",
    "request.query": "string",
    "origin.ip": "string",
    "origin.user_ip": "string",
    "origin.region_code": "string",
    "origin.asn": "int",
    "origin.tls_ja3_fingerprint": "string",
    "origin.tls_ja4_fingerprint": "string",
    "token.recaptcha_exemption.valid": "bool",
    "token.recaptcha_action.score": "float",
    "token.recaptcha_action.captcha_status": "string",
    "token.recaptcha_action.action": "string",
    "token.recaptcha_action.valid": "bool",
    "token.recaptcha_session.score": "float",
    "token.recaptcha_session.valid": "bool",
}
ROOTS = frozenset(path.split(".")[0] for path in ATTRIBUTES)

# Functions called as f(x, ...): name -> (min args, max args, returns a boolean).
FUNCTIONS: dict[str, tuple[int, int, bool]] = {
    "has": (1, 1, True),
    "inIpRange": (2, 2, True),
    "size": (1, 1, False),
    "int": (1, 1, False),
    # Recognised so real-world policies parse; evaluate to false locally (see the module doc).
    "evaluatePreconfiguredWaf": (1, 2, True),
    "evaluatePreconfiguredExpr": (1, 2, True),
    "evaluateThreatIntelligence": (1, 3, True),
    "evaluateAddressGroup": (2, 3, True),
    "evaluateOrganizationAddressGroup": (2, 3, True),
    "evaluateAdaptiveProtection": (1, 1, True),
    "evaluateAdaptiveProtectionAutoDeploy": (0, 0, True),
}
# Methods called as x.m(...): name -> (number of args, returns a boolean).
METHODS: dict[str, tuple[int, bool]] = {
    "contains": (1, True),
    "startsWith": (1, True),
    "endsWith": (1, True),
    "matches": (1, True),
    "lower": (0, False),
    "upper": (0, False),
    "size": (0, False),
    "base64Decode": (0, False),
    "urlDecode": (0, False),
    "urlDecodeUni": (0, False),
    "utf8ToUnicode": (0, False),
}
_METHOD_HINTS = {m.lower(): m for m in METHODS} | {f.lower(): f for f in FUNCTIONS}
_PASS_THROUGH = frozenset(
    {"expr", "conditionalor", "conditionaland", "relation", "addition", "multiplication", "unary", "member", "primary"}
)


# ---- requests ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RequestAttributes:
    """What the load balancer knows about a request, as the rules language sees it.

    ``headers`` keys are lower-case and a header sent several times is one comma-joined value
    (§3.4 "If a header contains multiple values, the value in this map would be a comma-separated
    string of all of the values of the header. The keys in this map are all lowercase."). Use
    ``from_http`` to build it from raw header pairs. ``query`` is the raw query string without
    ``?``, undecoded ("as it appears in the first line of the HTTP request").
    """

    path: str
    method: str
    headers: Mapping[str, str]
    query: str = ""
    scheme: str = "http"
    origin_ip: str = "127.0.0.1"
    region_code: str = ""
    user_ip: str = ""  # origin.user_ip; "" means "defaults to origin.ip" (as Google documents)
    asn: int = 0

    @classmethod
    def from_http(
        cls,
        method: str,
        path: str,
        header_pairs: Any,
        *,
        query: str = "",
        scheme: str = "http",
        origin_ip: str = "127.0.0.1",
        region_code: str = "",
    ) -> RequestAttributes:
        """From raw ``(name, value)`` pairs (a list, or a multidict's ``items()``): names lower-cased,
        repeated names joined with ``,`` (the separator Google uses is not documented; doubt)."""
        merged: dict[str, str] = {}
        for name, value in header_pairs:
            key = str(name).lower()
            merged[key] = f"{merged[key]},{value}" if key in merged else str(value)
        return cls(
            path=path,
            method=method,
            headers=merged,
            query=query,
            scheme=scheme,
            origin_ip=origin_ip,
            region_code=region_code,
        )

    def activation(self) -> dict[str, Any]:
        """The CEL variables: ``request``, ``origin`` and ``token`` (no tokens locally)."""
        s = celtypes.StringType
        headers = celtypes.MapType({s(k.lower()): s(v) for k, v in self.headers.items()})
        request = celtypes.MapType(
            {
                s("headers"): headers,
                s("method"): s(self.method),
                s("path"): s(self.path),
                s("query"): s(self.query),
                s("scheme"): s(self.scheme.lower()),
            }
        )
        origin = celtypes.MapType(
            {
                s("ip"): s(self.origin_ip),
                s("user_ip"): s(self.user_ip or self.origin_ip),
                s("region_code"): s(self.region_code),
                s("asn"): celtypes.IntType(self.asn),
                # "If not available, an empty string is returned." (plain HTTP locally)
                s("tls_ja3_fingerprint"): s(""),
                s("tls_ja4_fingerprint"): s(""),
            }
        )
        token = celtypes.MapType(
            {
                s("recaptcha_exemption"): celtypes.MapType({}),
                s("recaptcha_action"): celtypes.MapType({}),
                s("recaptcha_session"): celtypes.MapType({}),
            }
        )
        return {"request": request, "origin": origin, "token": token}


# ---- evaluation functions ----------------------------------------------------------------------
def _str_arg(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return str(value)


def _wire_bytes(text: str) -> bytes:
    """A string as the bytes that were on the wire (UTF-8, undecodable bytes kept as-is)."""
    return text.encode("utf-8", "surrogateescape")


def _from_wire(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _re2_options() -> Any:
    options = re2.Options()
    # §3.4 "The RE2 pattern is compiled by using the RE2::Latin1 option that disables Unicode
    # features." Pattern and text are both handled as bytes, one byte per character.
    options.encoding = re2.Options.Encoding.LATIN1
    options.log_errors = False
    return options


@functools.lru_cache(maxsize=1024)
def compile_re2(pattern: str) -> Any:
    """Compile a ``matches()`` pattern the way Cloud Armor does (raises ``re2.error``)."""
    return re2.compile(_wire_bytes(pattern), _re2_options())


def _matches(text: Any, pattern: Any) -> celtypes.BoolType:
    # §3.4 x.matches(y): "Returns true if the string x is partially matched by the specified RE2
    # pattern y" — a search, not a full match; anchor with ^ and $ yourself.
    try:
        regex = compile_re2(_str_arg(pattern))
    except re2.error as exc:
        raise ValueError(f"invalid regular expression: {exc}") from exc
    return celtypes.BoolType(regex.search(_wire_bytes(_str_arg(text))) is not None)


def _lower(text: Any) -> celtypes.StringType:
    return celtypes.StringType(_str_arg(text).lower())


def _upper(text: Any) -> celtypes.StringType:
    return celtypes.StringType(_str_arg(text).upper())


def _in_ip_range(ip: Any, ip_range: Any) -> celtypes.BoolType:
    try:
        address = ipaddress.ip_address(_str_arg(ip).strip())
        network = ipaddress.ip_network(_str_arg(ip_range).strip(), strict=False)
    except ValueError:
        return celtypes.BoolType(False)
    return celtypes.BoolType(address.version == network.version and address in network)


def _base64_decode(text: Any) -> celtypes.StringType:
    # "the underscore ( _ ) and hyphen ( - ) are first replaced with forward slash ( / ) and plus
    # sign ( + ) respectively. Returns "" (empty string) if x is not a valid base64 value."
    value = _str_arg(text).replace("_", "/").replace("-", "+")
    try:
        raw = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        return celtypes.StringType("")
    return celtypes.StringType(_from_wire(raw))


def _url_decode(text: Any) -> celtypes.StringType:
    # "character sequences in %## format are replaced with the non-ASCII equivalents, and + is
    # replaced with a space. Invalid encodings are returned as-is."
    return celtypes.StringType(urllib.parse.unquote_plus(_str_arg(text), encoding="utf-8", errors="surrogateescape"))


_PERCENT_U = re.compile(r"%u([0-9a-fA-F]{4})")


def _url_decode_uni(text: Any) -> celtypes.StringType:
    # "in addition to urlDecode(), this also handles unicode character sequences in %u### format"
    value = _PERCENT_U.sub(lambda m: chr(int(m.group(1), 16)), _str_arg(text))
    return _url_decode(value)


def _utf8_to_unicode(text: Any) -> celtypes.StringType:
    # "Returns the lowercase Unicode representation of a UTF-8 encoded x" (example: ¬ -> %u00ac).
    return celtypes.StringType("".join(c if ord(c) < 128 else f"%u{ord(c):04x}" for c in _str_arg(text)))


def _always_false(*_args: Any) -> celtypes.BoolType:
    # WAF signatures, threat-intelligence feeds, address groups and Adaptive Protection do not
    # exist locally: these operators never match here (see the module docstring).
    return celtypes.BoolType(False)


_CEL_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "matches": _matches,
    "lower": _lower,
    "upper": _upper,
    "inIpRange": _in_ip_range,
    "base64Decode": _base64_decode,
    "urlDecode": _url_decode,
    "urlDecodeUni": _url_decode_uni,
    "utf8ToUnicode": _utf8_to_unicode,
    **{
        name: _always_false
        for name in (
            "evaluatePreconfiguredWaf",
            "evaluatePreconfiguredExpr",
            "evaluateThreatIntelligence",
            "evaluateAddressGroup",
            "evaluateOrganizationAddressGroup",
            "evaluateAdaptiveProtection",
            "evaluateAdaptiveProtectionAutoDeploy",
        )
    },
}

# Errors evaluation can end in: CEL errors, and overload problems celpy does not wrap.
_EVAL_ERRORS: tuple[type[BaseException], ...] = (celpy.CELEvalError, TypeError, ValueError, KeyError)


# ---- the compiled expression -------------------------------------------------------------------
@dataclass(frozen=True)
class Expression:
    """A parsed expression; build it once with ``parse``/``validate`` and evaluate it per request."""

    source: str
    _tree: lark.Tree = field(repr=False, compare=False)
    _runner: Any = field(repr=False, compare=False)

    def subexpressions(self) -> int:
        """The atomic conditions joined by ``&&``/``||``, as Cloud Armor counts toward its limit of 5."""
        return len(_leaves(self._tree))

    def header_lookups_without_has(self) -> list[str]:
        """Header names read with ``request.headers['k']`` without an earlier ``has()`` guard."""
        found: list[str] = []
        _unguarded_lookups(self._tree, frozenset(), found)
        return list(dict.fromkeys(found))

    def evaluate(self, request: RequestAttributes) -> bool:
        """Whether the rule matches ``request``; an evaluation error means no match (module doc)."""
        try:
            result = self._runner.evaluate(request.activation())
        except _EVAL_ERRORS:
            return False
        return isinstance(result, celtypes.BoolType) and bool(result)


_env_lock = threading.Lock()


def _cached_parser() -> None:
    """Build cel-python's one shared Lark parser with Lark's grammar cache, before ``Environment`` does.

    cel-python builds it on first use with the same options but no ``cache``: ~90 ms of every offline
    ``deployer check`` (goal < 0.5 s). Lark's ``cache=True`` keeps the analysed grammar in the temp directory
    (keyed by grammar, options and Lark's version; unreadable or unwritable, it builds as before): ~6 ms.
    The options are cel-python's own (``celparser.CELParser.__init__``), with the tree class the default
    ``InterpretedRunner`` asks for.
    """
    import re
    from pathlib import Path

    from celpy.celparser import CELParser

    if CELParser.CEL_PARSER is not None:
        return
    grammar = (Path(celpy.celparser.__file__).parent / "cel.lark").read_text()
    CELParser.CEL_PARSER = lark.Lark(
        grammar,
        parser="lalr",
        start="expr",
        debug=True,
        g_regex_flags=re.M,
        lexer_callbacks={"IDENT": CELParser.ambiguous_literals},
        propagate_positions=True,
        maybe_placeholders=False,
        priority="invert",
        tree_class=celpy.InterpretedRunner.tree_node_class,
        cache=True,
    )


@functools.lru_cache(maxsize=1)
def _environment() -> celpy.Environment:
    _cached_parser()
    return celpy.Environment()


def parse(source: str) -> Expression:
    """Compile ``source``; raise ``ExpressionError`` for anything Cloud Armor would refuse to parse."""
    if not isinstance(source, str) or not source.strip():
        raise ExpressionError("The expression is empty.", 0)
    with _env_lock:
        env = _environment()
        try:
            tree = env.compile(source)
        except celpy.CELParseError as exc:
            raise _syntax_error(source, exc) from exc
        _check(tree, source)
        runner = env.program(tree, functions=_CEL_FUNCTIONS)
    return Expression(source=source, _tree=tree, _runner=runner)


def validate(source: str) -> Expression:
    """``parse`` plus Cloud Armor's write-time limit on subexpressions (gcp-facts §3.4)."""
    expression = parse(source)
    count = expression.subexpressions()
    if count > facts.ARMOR_MAX_SUBEXPRESSIONS:
        raise ExpressionError(
            f"The expression has {count} subexpressions; an advanced match condition may combine at most "
            f"{facts.ARMOR_MAX_SUBEXPRESSIONS} subexpressions with && and ||."
        )
    return expression


# ---- syntax errors -----------------------------------------------------------------------------
def _offset(source: str, line: int | None, column: int | None) -> int | None:
    if line is None or column is None:
        return None
    lines = source.splitlines(keepends=True)
    return sum(len(x) for x in lines[: line - 1]) + column - 1


def _syntax_error(source: str, exc: celpy.CELParseError) -> ExpressionError:
    cause = exc.__context__
    if isinstance(cause, lark.exceptions.UnexpectedToken) and cause.token.type == "$END":
        return ExpressionError("Syntax error: the expression ends too early.", len(source))
    position = _offset(source, exc.line, exc.column)
    if isinstance(cause, lark.exceptions.UnexpectedToken):
        return ExpressionError(
            f"Syntax error at line {exc.line}, column {exc.column}: unexpected {cause.token.value!r}.", position
        )
    if isinstance(cause, lark.exceptions.UnexpectedCharacters):
        return ExpressionError(
            f"Syntax error at line {exc.line}, column {exc.column}: unexpected character {cause.char!r}.", position
        )
    return ExpressionError(f"Syntax error at line {exc.line}, column {exc.column}.", position)


# ---- static checks -----------------------------------------------------------------------------
def _pos(node: lark.Tree | lark.Token) -> int | None:
    if isinstance(node, lark.Token):
        return node.start_pos
    return getattr(node.meta, "start_pos", None)


def _text(node: lark.Tree, source: str) -> str:
    start, end = getattr(node.meta, "start_pos", None), getattr(node.meta, "end_pos", None)
    if start is None or end is None:
        return "<expression>"
    return source[start:end]


def _unwrap(node: Any, parens: bool = False) -> Any:
    """Skip the grammar's single-child precedence layers (and parentheses, if asked)."""
    while isinstance(node, lark.Tree):
        single = node.data in _PASS_THROUGH and len(node.children) == 1
        if not (single or (parens and node.data == "paren_expr")):
            break
        node = node.children[0]
    return node


def _dotted(node: Any) -> list[str] | None:
    """``a.b.c`` as ``["a", "b", "c"]`` when the member chain starts at an identifier."""
    node = _unwrap(node)
    if isinstance(node, lark.Tree) and node.data == "ident":
        return [str(node.children[0])]
    if isinstance(node, lark.Tree) and node.data == "member_dot":
        inner = _dotted(node.children[0])
        return None if inner is None else [*inner, str(node.children[1])]
    return None


def _string_literal(node: Any) -> str | None:
    node = _unwrap(node, parens=True)
    if isinstance(node, lark.Tree) and node.data == "literal":
        token = node.children[0]
        if isinstance(token, lark.Token) and token.type in ("STRING_LIT", "MLSTRING_LIT"):
            return str(celpy.evaluation.celstr(token))
    return None


def _args(node: lark.Tree, first: int) -> list[Any]:
    """The argument expressions of a call whose optional ``exprlist`` child is at ``first``."""
    if len(node.children) > first and isinstance(node.children[first], lark.Tree):
        return list(node.children[first].children)
    return []


def _header_key(node: Any) -> str | None:
    """``k`` when ``node`` is ``request.headers['k']``."""
    node = _unwrap(node, parens=True)
    is_index = isinstance(node, lark.Tree) and node.data == "member_index"
    if is_index and _dotted(node.children[0]) == ["request", "headers"]:
        return _string_literal(node.children[1])
    return None


def _check(node: Any, source: str) -> None:
    _check_names(node, source)
    for leaf in _leaves(node):
        if not _is_condition(leaf):
            raise ExpressionError(
                f"'{_text(leaf, source)}' is not a condition: each subexpression must evaluate to a boolean.",
                _pos(leaf),
            )


def _check_names(node: Any, source: str) -> None:
    if not isinstance(node, lark.Tree):
        return
    kind = node.data
    if kind == "member_dot":
        path = _dotted(node)
        if path is None:
            raise ExpressionError(f"Field selection is not supported on '{_text(node, source)}'.", _pos(node))
        name = ".".join(path)
        if name not in ATTRIBUTES:
            raise ExpressionError(f"Unknown attribute '{name}'.", _pos(node))
        return
    if kind == "ident":
        name = str(node.children[0])
        if name in ROOTS:
            raise ExpressionError(f"'{name}' is not an attribute by itself; use e.g. request.path.", _pos(node))
        raise ExpressionError(f"Undeclared reference to '{name}'.", _pos(node))
    if kind == "member_dot_arg":
        _check_method(node, source)
    elif kind == "ident_arg":
        _check_function(node, source)
    elif kind in ("dot_ident", "dot_ident_arg", "member_object"):
        raise ExpressionError(f"'{_text(node, source)}' is not supported in Cloud Armor rules.", _pos(node))
    for child in node.children:
        _check_names(child, source)


def _unknown(name: str, what: str, position: int | None) -> ExpressionError:
    hint = _METHOD_HINTS.get(name.lower())
    suffix = f" Did you mean '{hint}'?" if hint and hint != name else ""
    return ExpressionError(f"Unknown {what} '{name}'.{suffix}", position)


def _check_method(node: lark.Tree, source: str) -> None:
    token = node.children[1]
    name = str(token)
    if name not in METHODS:
        raise _unknown(name, "function", _pos(token))
    arity, _boolean = METHODS[name]
    args = _args(node, 2)
    if len(args) != arity:
        raise ExpressionError(f"{name}() takes {arity} argument(s), got {len(args)}.", _pos(token))
    if name == "matches":
        pattern = _string_literal(args[0])
        if pattern is not None:
            _check_regex(pattern, _pos(args[0]))


def _check_regex(pattern: str, position: int | None) -> None:
    try:
        regex = compile_re2(pattern)
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ExpressionError(f"Invalid regular expression: {pattern}, {reason}.", position) from exc
    if regex.groups:
        # A real 400 (kubernetes/k8s.io#6979): "Invalid regular expression: <pattern>, Capture Groups
        # are not allowed." Use (?:...) for grouping.
        raise ExpressionError(f"Invalid regular expression: {pattern}, Capture Groups are not allowed.", position)


def _check_function(node: lark.Tree, source: str) -> None:
    token = node.children[0]
    name = str(token)
    if name not in FUNCTIONS:
        raise _unknown(name, "function", _pos(token))
    low, high, _boolean = FUNCTIONS[name]
    args = _args(node, 1)
    if not low <= len(args) <= high:
        want = str(low) if low == high else f"{low} to {high}"
        raise ExpressionError(f"{name}() takes {want} argument(s), got {len(args)}.", _pos(token))
    if name == "has":
        target = _unwrap(args[0], parens=True)
        if not (isinstance(target, lark.Tree) and target.data in ("member_index", "member_dot")):
            raise ExpressionError(
                "has() needs a map lookup or a field, such as has(request.headers['x-key']).", _pos(args[0])
            )
    elif name == "inIpRange":
        ip_range = _string_literal(args[1])
        if ip_range is not None:
            try:
                ipaddress.ip_network(ip_range.strip(), strict=False)
            except ValueError as exc:
                raise ExpressionError(f"Invalid IP range '{ip_range}' in inIpRange().", _pos(args[1])) from exc


# ---- subexpressions ----------------------------------------------------------------------------
def _leaves(node: Any) -> list[lark.Tree]:
    """The atomic conditions: what remains after splitting on ``&&``, ``||``, ``!``, ``?:`` and ``()``."""
    if not isinstance(node, lark.Tree):
        return []
    kind, children = node.data, node.children
    if kind == "expr" or kind in ("conditionalor", "conditionaland"):
        return [leaf for child in children for leaf in _leaves(child)]
    if kind in ("relation", "addition", "multiplication", "member"):
        return _leaves(children[0]) if len(children) == 1 else [node]
    if kind == "unary":
        if len(children) == 1:
            return _leaves(children[0])
        op = children[0]
        if isinstance(op, lark.Tree) and op.data == "unary_not":
            return _leaves(children[1])
        return [node]
    if kind == "primary":
        child = children[0]
        if isinstance(child, lark.Tree) and child.data == "paren_expr":
            return _leaves(child.children[0])
        return [node]
    return [node]


def _is_condition(leaf: lark.Tree) -> bool:
    kind = leaf.data
    if kind == "relation":  # a comparison: ==, !=, <, <=, >, >=, in
        return True
    if kind == "member_dot":
        return ATTRIBUTES.get(".".join(_dotted(leaf) or []), "") == "bool"
    if kind == "member_dot_arg":
        return METHODS.get(str(leaf.children[1]), (0, False))[1]
    if kind == "primary":
        child = leaf.children[0]
        if isinstance(child, lark.Tree) and child.data == "ident_arg":
            return FUNCTIONS.get(str(child.children[0]), (0, 0, False))[2]
        if isinstance(child, lark.Tree) and child.data == "literal":
            token = child.children[0]
            return isinstance(token, lark.Token) and token.type == "BOOL_LIT"
    return False


# ---- has() guards ------------------------------------------------------------------------------
def _chain(node: lark.Tree, kind: str) -> list[Any]:
    """The operands of a left-nested ``&&`` (or ``||``) chain, in source order."""
    if isinstance(node, lark.Tree) and node.data == kind and len(node.children) == 2:
        return [*_chain(node.children[0], kind), node.children[1]]
    if isinstance(node, lark.Tree) and node.data == kind:
        return [node.children[0]]
    return [node]


def _has_keys(node: Any) -> set[str]:
    """Header keys a true ``node`` proves present: ``has(request.headers['k'])``, or ``&&`` of such."""
    node = _unwrap(node, parens=True)
    if not isinstance(node, lark.Tree):
        return set()
    if node.data == "conditionaland" and len(node.children) == 2:
        return {key for operand in _chain(node, "conditionaland") for key in _has_keys(operand)}
    if node.data == "ident_arg" and str(node.children[0]) == "has":
        args = _args(node, 1)
        key = _header_key(args[0]) if args else None
        return {key} if key is not None else set()
    return set()


def _unguarded_lookups(node: Any, guarded: frozenset[str], found: list[str]) -> None:
    if not isinstance(node, lark.Tree):
        return
    kind, children = node.data, node.children
    if kind == "conditionaland" and len(children) == 2:
        proven = set(guarded)
        for operand in _chain(node, "conditionaland"):
            _unguarded_lookups(operand, frozenset(proven), found)
            proven |= _has_keys(operand)
        return
    if kind == "expr" and len(children) == 3:  # cond ? a : b — cond guards a
        _unguarded_lookups(children[0], guarded, found)
        _unguarded_lookups(children[1], guarded | _has_keys(children[0]), found)
        _unguarded_lookups(children[2], guarded, found)
        return
    if kind == "ident_arg" and str(children[0]) == "has":
        return  # the lookup inside has() is the check itself
    key = _header_key(node) if kind == "member_index" else None
    if key is not None and key not in guarded:
        found.append(key)
    for child in children:
        _unguarded_lookups(child, guarded, found)
