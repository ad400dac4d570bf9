"""API conformance of every TensorRT, pycuda and cuda-python call the package makes, per version, without TensorRT,
a CUDA binding or a GPU. This is conformance, not execution: nothing here runs an engine.

    python -m ladon_deploy.engines.api_check [--json]      # exit 0: every call exists in every version reaching it

How: for each API table in engines/api_tables/ (extracted by scripts/extract_trt_api.py from NVIDIA/TensorRT's
binding sources at each release tag, from pycuda's Boost.Python wrappers and from cuda-python's sources) a strict
stand-in module is generated and put in sys.modules as `tensorrt`, `pycuda.driver` or `cuda.bindings.runtime` /
`cuda.cudart`. The package's own builder (engines.build.TensorRTCompiler -> tensorrt_api.build_serialized_engine),
runner (engines.tensorrt_runner.TensorRTRunner -> tensorrt_api.LoadedEngine and the CUDA bindings) and calibrator
(calibration.trt_calibrator.entropy_calibrator) are then driven, for each TensorRT version the toolkit accepts, down
every path that version reaches (each precision, DLA or not, each failure branch). The stand-ins refuse, at the
caller's file:line, any name the version does not have, an unknown keyword, a wrong argument count, a property
called as a method or a method used as a value, an assignment to a read-only or removed property, an override the
base class does not offer; a cuda-python call returns exactly as many values as that release does, so unpacking the
wrong number fails. Lines of the driven functions that no scenario reached are reported too (a call nothing checks),
as is any function elsewhere in the package that touches TensorRT or a CUDA binding without being driven.

What the stand-ins return (engine tensor names, shapes, the parse result...) is this driver's own small model of one
engine with one input and one output: behaviour, shapes, memory and speed are not checked here.

ONNX Runtime: the CUDA and TensorRT execution-provider option names the runners pass are checked against the names
each onnxruntime release the targets use documents (api_tables/onnxruntime-ep-options.json).

Dev-side tool: Python 3.8+, imports no TensorRT and is not part of the edge subset (the Jetson never imports it; the
Python 3.6 edge tests leave it out).
"""
import argparse
import ast
import contextlib
import json
import os
import sys
import types
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

TABLES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "api_tables")
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT_DIR = os.path.dirname(PACKAGE_DIR)
THIS_FILE = os.path.abspath(__file__)


# ------------------------------------------------------------------------------------------------------- findings
class Misuse(BaseException):
    """Raised by a stand-in at a nonconforming call. A BaseException, so that the code under test's own
    `except Exception` (e.g. open_cuda's) cannot swallow it; it is recorded before it is raised."""


class Recorder(object):
    """Findings and checked call sites of one API version."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.errors = []  # type: List[str]
        self.warnings = []  # type: List[str]
        self.sites = set()  # type: set
        self.checks = 0

    def site(self) -> str:
        return caller_site()

    def checked(self, name: str) -> None:
        self.checks += 1
        self.sites.add((self.site(), name))

    def fail(self, message: str, site: Optional[str] = None) -> None:
        line = "%s: %s" % (site or self.site(), message)
        if line not in self.errors:
            self.errors.append(line)
        raise Misuse(line)

    def warn(self, message: str) -> None:
        line = "%s: %s" % (self.site(), message)
        if line not in self.warnings:
            self.warnings.append(line)


def caller_site(frames: Optional[Sequence[Tuple[str, int]]] = None) -> str:
    """file:line of the innermost frame in the checked package (this module and the stand-ins excluded)."""
    if frames is None:
        frames = []
        frame = sys._getframe(1)
        while frame is not None:
            frames.append((frame.f_code.co_filename, frame.f_lineno))
            frame = frame.f_back
    for filename, lineno in frames:
        path = os.path.abspath(filename)
        if path.startswith(PACKAGE_DIR + os.sep) and path != THIS_FILE:
            return "%s:%d" % (os.path.relpath(path, ROOT_DIR), lineno)
    return "<driver>"


def traceback_site(exc: BaseException) -> str:
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append((tb.tb_frame.f_code.co_filename, tb.tb_lineno))
        tb = tb.tb_next
    return caller_site(list(reversed(frames)))


# ------------------------------------------------------------------------------------------------------ API specs
def load_table(name: str) -> Dict[str, Any]:
    with open(os.path.join(TABLES_DIR, name), "r") as handle:
        return json.load(handle)


def table_names(prefix: str) -> List[str]:
    return sorted(n for n in os.listdir(TABLES_DIR) if n.startswith(prefix) and n.endswith(".json"))


def version_key(version: str) -> Tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())


class Member(object):
    """One class or module member: kind, overloads [{args, arity, defaults}], writable, deprecated."""

    def __init__(self, owner: str, name: str, entry: Dict[str, Any]) -> None:
        self.owner = owner
        self.name = name
        self.kind = entry.get("kind", "method")
        self.overloads = entry.get("overloads", [])
        self.writable = bool(entry.get("writable"))
        self.readable = entry.get("readable", True)
        self.deprecated = bool(entry.get("deprecated")) or (bool(self.overloads) and
                                                             all(o.get("deprecated") for o in self.overloads))
        self.target = entry.get("class") or entry.get("enum")

    @property
    def qualified(self) -> str:
        return "%s.%s" % (self.owner, self.name) if self.owner else self.name


def check_call(recorder: Recorder, member: Member, args: Sequence[Any], kwargs: Dict[str, Any]) -> None:
    """Refuses a call no overload of `member` accepts (positional count, keyword names, missing arguments)."""
    recorder.checked(member.qualified)
    if member.deprecated:
        recorder.warn("%s is deprecated in %s" % (member.qualified, recorder.label))
    if not member.overloads:
        return
    problems = []
    for overload in member.overloads:
        names = overload.get("args")
        arity = overload.get("arity")
        if names is None:
            if kwargs:
                problems.append("%s takes no keyword arguments in %s (got %s)"
                                % (member.qualified, recorder.label, ", ".join(sorted(kwargs))))
                continue
            if arity is not None and len(args) != arity:
                problems.append("%s takes %d argument%s in %s, got %d"
                                % (member.qualified, arity, "" if arity == 1 else "s", recorder.label, len(args)))
                continue
            return
        optional = set(overload.get("defaults", {})) | set(overload.get("optional", []))
        unknown = [k for k in kwargs if k not in names]
        if unknown:
            problems.append("%s has no keyword %r in %s (its keywords: %s)"
                            % (member.qualified, unknown[0], recorder.label, ", ".join(names) or "none"))
            continue
        if len(args) > len(names):
            problems.append("%s takes %d argument%s in %s, got %d"
                            % (member.qualified, len(names), "" if len(names) == 1 else "s", recorder.label,
                               len(args) + len(kwargs)))
            continue
        given = set(names[:len(args)]) | set(kwargs)
        if set(names[:len(args)]) & set(kwargs):
            problems.append("%s got %s both by position and by keyword" % (member.qualified, sorted(given)))
            continue
        missing = [n for n in names if n not in given and n not in optional]
        if missing:
            problems.append("%s takes %d argument%s in %s, got %d (missing %s)"
                            % (member.qualified, len(names), "" if len(names) == 1 else "s", recorder.label,
                               len(args) + len(kwargs), ", ".join(missing)))
            continue
        return
    recorder.fail(problems[0])


# ----------------------------------------------------------------------------------------------- stand-in objects
class Opaque(object):
    """What a stand-in returns where the driver's engine model has no value: fine to pass back, refused otherwise."""

    def __init__(self, what: str, recorder: Recorder) -> None:
        self._what = what
        self._recorder = recorder

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        self._recorder.fail("the conformance driver has no value for %s (extend api_check's engine model)"
                            % self._what)

    __int__ = __index__ = __iter__ = __len__ = __getitem__ = __call__ = _refuse

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return self._refuse()


class PropertyValue(object):
    """Mixin for values read from a property: calling them is the property-used-as-a-method mistake."""

    _ladon_property = None  # type: Optional[Tuple[Recorder, str]]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        recorder, name = self._ladon_property
        recorder.fail("%s is a property in %s, not a method" % (name, recorder.label))


_VALUE_TYPES = {}  # type: Dict[type, type]


def property_value(value: Any, recorder: Recorder, name: str) -> Any:
    """`value` marked as read from property `name` (a call on it is refused with the property named)."""
    if value is None or isinstance(value, Opaque):
        return value
    if isinstance(value, StandIn):
        object.__setattr__(value, "_ladon_property", (recorder, name))
        return value
    base = int if isinstance(value, bool) else type(value)
    if base not in (int, float, str, bytes, tuple, list):
        return value
    if base not in _VALUE_TYPES:
        _VALUE_TYPES[base] = type("property_" + base.__name__, (PropertyValue, base), {})
    wrapped = _VALUE_TYPES[base](value)
    wrapped._ladon_property = (recorder, name)
    return wrapped


class BoundCall(object):
    """A method looked up on a stand-in: calling it checks the arguments; using it as a value is refused."""

    def __init__(self, api: "Api", member: Member, instance: Any) -> None:
        self._api = api
        self._member = member
        self._instance = instance

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        check_call(self._api.recorder, self._member, args, kwargs)
        return self._api.behave(self._member, self._instance, args, kwargs)

    def _as_value(self, *args: Any, **kwargs: Any) -> Any:
        self._api.recorder.fail("%s is a method in %s, not a property: call it"
                                % (self._member.qualified, self._api.recorder.label))

    __int__ = __index__ = __iter__ = __len__ = __bool__ = __float__ = __getitem__ = _as_value

    def __eq__(self, other: Any) -> Any:
        return self._as_value()

    __hash__ = object.__hash__


class StandInMeta(type):
    """Class-level lookups (enum members, nested enums, static methods) refused when the version lacks them."""

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__") or name.startswith("_ladon"):
            raise AttributeError(name)
        api = cls._ladon_api
        base = _standin_base(cls)
        member = api.lookup(base._ladon_name, name)
        if member is None:
            api.recorder.fail("%s.%s does not exist in %s" % (base._ladon_name, name, api.recorder.label))
        api.recorder.checked(member.qualified)
        if member.kind in ("method", "staticmethod"):
            return BoundCall(api, member, None)
        return api.class_attribute(base._ladon_name, member)

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        api = cls._ladon_api
        if not cls.__dict__.get("_ladon_is_standin"):  # a user subclass (a calibrator): Python builds it, its __init__ runs
            return type.__call__(cls, *args, **kwargs)
        init = api.lookup(cls._ladon_name, "__init__")
        if init is None:
            api.recorder.fail("%s has no constructor in %s" % (cls._ladon_name, api.recorder.label))
        check_call(api.recorder, init, args, kwargs)
        instance = object.__new__(cls)
        object.__setattr__(instance, "_ladon_state", {})
        api.behave(init, instance, args, kwargs)
        return instance


class StandIn(object):
    """Base of every stand-in class: member lookups and assignments checked against the table."""

    _ladon_api = None  # type: Any
    _ladon_name = "?"
    _ladon_is_standin = True
    _ladon_property = None  # type: Optional[Tuple[Recorder, str]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        api = type(self)._ladon_api
        base = _standin_base(type(self))
        init = api.lookup(base._ladon_name, "__init__")
        if init is None:
            api.recorder.fail("%s has no constructor in %s" % (base._ladon_name, api.recorder.label))
        check_call(api.recorder, init, args, kwargs)
        object.__setattr__(self, "_ladon_state", {})

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("_ladon") or (name.startswith("__") and name.endswith("__")):
            return object.__getattribute__(self, name)
        cls = type(self)
        api = cls._ladon_api
        base = _standin_base(cls)
        if cls is not base and name in _user_namespace(cls):
            return object.__getattribute__(self, name)  # the subclass's own method (an override)
        member = api.lookup(base._ladon_name, name)
        if member is None:
            api.recorder.fail("%s.%s does not exist in %s" % (base._ladon_name, name, api.recorder.label))
        if member.kind in ("method", "staticmethod", "function"):
            api.recorder.checked(member.qualified)
            return BoundCall(api, member, self)
        api.recorder.checked(member.qualified)
        if member.deprecated:
            api.recorder.warn("%s is deprecated in %s" % (member.qualified, api.recorder.label))
        if member.kind == "property" and not member.readable:
            api.recorder.fail("%s is write-only in %s" % (member.qualified, api.recorder.label))
        state = _state(self)
        if name in state:
            return property_value(state[name], api.recorder, member.qualified)
        if member.kind in ("enum_value", "class", "attribute"):
            return api.class_attribute(base._ladon_name, member)
        return property_value(api.behave(member, self, (), {}), api.recorder, member.qualified)

    def __setattr__(self, name: str, value: Any) -> None:
        cls = type(self)
        api = cls._ladon_api
        base = _standin_base(cls)
        if cls is not base:  # pybind11 subclasses have a __dict__: their own attributes are fine
            member = api.lookup(base._ladon_name, name)
            if member is None:
                object.__setattr__(self, name, value)
                return
        member = api.lookup(base._ladon_name, name)
        if member is None:
            api.recorder.fail("%s.%s does not exist in %s (assignment)" % (base._ladon_name, name,
                                                                            api.recorder.label))
        api.recorder.checked(member.qualified)
        if member.kind != "property":
            api.recorder.fail("%s is a %s in %s, not a property: it cannot be assigned"
                              % (member.qualified, member.kind, api.recorder.label))
        if not member.writable:
            api.recorder.fail("%s is read-only in %s" % (member.qualified, api.recorder.label))
        if member.deprecated:
            api.recorder.warn("%s is deprecated in %s" % (member.qualified, api.recorder.label))
        _state(self)[name] = value
        api.assigned(member, self, value)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        marker = object.__getattribute__(self, "_ladon_property")
        api = type(self)._ladon_api
        if marker:
            api.recorder.fail("%s is a property in %s, not a method" % (marker[1], api.recorder.label))
        api.recorder.fail("%s objects are not callable in %s" % (_standin_base(type(self))._ladon_name,
                                                                  api.recorder.label))

    def __bytes__(self) -> bytes:
        return bytes(_state(self).get("_bytes", b"stand-in"))

    def __int__(self) -> int:
        return int(_state(self).get("_int", 0x1000))

    __index__ = __int__


def _state(instance: Any) -> Dict[str, Any]:
    try:
        return object.__getattribute__(instance, "_ladon_state")
    except AttributeError:
        object.__setattr__(instance, "_ladon_state", {})
        return object.__getattribute__(instance, "_ladon_state")


def _standin_base(cls: type) -> type:
    for klass in cls.__mro__:
        if klass.__dict__.get("_ladon_is_standin"):
            return klass
    return cls


def _user_namespace(cls: type) -> Dict[str, Any]:
    names = {}  # type: Dict[str, Any]
    for klass in reversed(cls.__mro__):
        if not klass.__dict__.get("_ladon_is_standin") and klass not in (object, StandIn):
            names.update(klass.__dict__)
    return names


class EnumValue(object):
    """An enum member: int() is its position, str() 'Enum.MEMBER' (as pybind11 prints it)."""

    def __init__(self, enum: str, name: str, value: int) -> None:
        self.enum = enum
        self.name = name
        self.value = value

    def __int__(self) -> int:
        return self.value

    __index__ = __int__

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, EnumValue) and (self.enum, self.name) == (other.enum, other.name)

    def __hash__(self) -> int:
        return hash((self.enum, self.name))

    def __repr__(self) -> str:
        return "<%s.%s: %d>" % (self.enum.split(".")[-1], self.name, self.value)

    def __str__(self) -> str:
        return "%s.%s" % (self.enum.split(".")[-1], self.name)


class Api(object):
    """One API version as stand-in classes and module members, with a behaviour table driving the package."""

    def __init__(self, label: str, classes: Dict[str, Dict[str, Any]], functions: Dict[str, Dict[str, Any]],
                 module_names: Sequence[str], behaviours: Dict[str, Callable[..., Any]]) -> None:
        self.label = label
        self.recorder = Recorder(label)
        self.behaviours = behaviours
        self.members = {}  # type: Dict[str, Dict[str, Member]]
        self.bases = {}  # type: Dict[str, List[str]]
        self.kinds = {}  # type: Dict[str, str]
        for name, table in classes.items():
            self.members[name] = {m: Member(name, m, e) for m, e in table.get("members", {}).items()}
            self.bases[name] = [b for b in table.get("bases", []) if b in classes]
            self.kinds[name] = table.get("kind", "class")
        self.overridable = {n: set(t.get("overridable", [])) for n, t in classes.items()}
        self.functions = {n: Member("", n, dict(e, kind="function")) for n, e in functions.items()}
        self.module_names = set(module_names)
        self.classes = {}  # type: Dict[str, type]
        self.enum_values = {}  # type: Dict[Tuple[str, str], EnumValue]
        self.state = {}  # type: Dict[str, Any]

    def lookup(self, cls: str, name: str, seen: Optional[set] = None) -> Optional[Member]:
        seen = seen or set()
        if cls in seen or cls not in self.members:
            return None
        seen.add(cls)
        if name in self.members[cls]:
            return self.members[cls][name]
        for base in self.bases.get(cls, []):
            found = self.lookup(base, name, seen)
            if found is not None:
                return found
        return None

    def standin_class(self, name: str) -> type:
        if name not in self.classes:
            bases = tuple(self.standin_class(b) for b in self.bases.get(name, [])) or (StandIn,)
            self.classes[name] = StandInMeta(name.split(".")[-1], bases, {
                "_ladon_api": self, "_ladon_name": name, "_ladon_is_standin": True})
        return self.classes[name]

    def enum_value(self, enum: str, member: str) -> EnumValue:
        key = (enum, member)
        if key not in self.enum_values:
            names = [m for m, e in self.members.get(enum, {}).items() if e.kind == "enum_value" and not e.target]
            self.enum_values[key] = EnumValue(enum, member, names.index(member) if member in names else 0)
        return self.enum_values[key]

    def class_attribute(self, cls: str, member: Member) -> Any:
        if member.kind == "enum_value":
            return self.enum_value(member.target or cls, member.name)
        if member.kind == "class":
            return self.standin_class(member.target)
        return Opaque(member.qualified, self.recorder)

    def instance(self, cls: str, **state: Any) -> Any:
        if cls not in self.members:
            self.recorder.fail("%s does not exist in %s" % (cls, self.label))
        instance = object.__new__(self.standin_class(cls))
        object.__setattr__(instance, "_ladon_state", dict(state))
        return instance

    def behave(self, member: Member, instance: Any, args: Sequence[Any], kwargs: Dict[str, Any]) -> Any:
        behaviour = self.behaviours.get(member.qualified) or self.behaviours.get("*." + member.name)
        if behaviour is None:
            if member.name == "__init__":
                return None
            return Opaque(member.qualified, self.recorder)
        return behaviour(self, instance, *args, **kwargs)

    def assigned(self, member: Member, instance: Any, value: Any) -> None:
        hook = self.behaviours.get("=" + member.qualified)
        if hook is not None:
            hook(self, instance, value)

    def module(self, name: str) -> types.ModuleType:
        """The stand-in module: its classes, functions and pure-Python names; anything else refused."""
        api = self

        class StandInModule(types.ModuleType):
            def __getattr__(self, attr: str) -> Any:
                if attr.startswith("__") and attr != "__version__":
                    raise AttributeError(attr)
                if attr in api.members and "." not in attr:
                    api.recorder.checked(attr)
                    return api.standin_class(attr)
                if attr in api.functions:
                    api.recorder.checked(attr)
                    return BoundCall(api, api.functions[attr], None)
                if attr in api.module_names:
                    api.recorder.checked(attr)
                    value = api.behaviours.get("module." + attr)
                    return value(api) if value else Opaque(attr, api.recorder)
                api.recorder.fail("%s.%s does not exist in %s" % (name, attr, api.label))

        module = StandInModule(name)
        module.__file__ = "<%s stand-in, %s>" % (name, self.label)
        return module


# ------------------------------------------------------------------------------------- the driver's engine model
class EngineModel(object):
    """One engine with an input 'image' (1, 3, H, W) and an output 'latent' (1, 8, H/4, W/4), float32."""

    NAMES = ("image", "latent")
    ENGINE_SHAPES = {"image": (1, 3, -1, -1), "latent": (1, 8, -1, -1)}

    def __init__(self, parse_ok: bool = True, build_ok: bool = True, deserialize_ok: bool = True,
                 shape_ok: bool = True, all_shapes: bool = True, enqueue_ok: bool = True) -> None:
        self.parse_ok = parse_ok
        self.build_ok = build_ok
        self.deserialize_ok = deserialize_ok
        self.shape_ok = shape_ok
        self.all_shapes = all_shapes
        self.enqueue_ok = enqueue_ok
        self.input_shape = None  # type: Optional[Tuple[int, ...]]

    def context_shape(self, name: str) -> Tuple[int, ...]:
        if name == "image":
            return tuple(self.input_shape or (1, 3, 64, 64))
        height, width = (self.input_shape or (1, 3, 64, 64))[2:]
        return (1, 8, height // 4, width // 4)


def _index_name(index: Any) -> str:
    return EngineModel.NAMES[int(index)]


def _run_calibrator(api: Api, calibrator: Any) -> None:
    """What TensorRT does with config.int8_calibrator during an INT8 build: the overrides it calls, as it calls them."""
    cls = type(calibrator)
    base = _standin_base(cls)._ladon_name
    allowed = set()
    for name in [base] + api.bases.get(base, []):
        allowed |= api.overridable.get(name, set())
    for name, value in _user_namespace(cls).items():
        if callable(value) and not name.startswith("__") and name not in allowed:
            api.recorder.fail("%s.%s overrides nothing: %s has no overridable method %s in %s"
                              % (cls.__name__, name, base, name, api.label),
                              site=_definition_site(value))
    cache = calibrator.read_calibration_cache() if "read_calibration_cache" in allowed else None
    if cache is None:
        calibrator.get_batch_size()
        while calibrator.get_batch(["image"]) is not None:
            pass
        calibrator.write_calibration_cache(memoryview(b"TRT-8502-EntropyCalibration2\nimage: 3c010a14\n"))


def _definition_site(function: Any) -> str:
    code = getattr(function, "__code__", None)
    return caller_site([(code.co_filename, code.co_firstlineno)]) if code else "<driver>"


def tensorrt_behaviours(version: str, model: EngineModel) -> Dict[str, Callable[..., Any]]:
    """What the TensorRT stand-in answers (member -> function(api, self, *args)): only values, never checks."""
    def engine(api: Api, _self: Any, *args: Any) -> Any:
        return api.instance("ICudaEngine") if model.deserialize_ok else None

    def build(api: Api, _self: Any, *network_and_config: Any) -> Any:
        config = network_and_config[1]
        calibrator = _state(config).get("int8_calibrator")
        if calibrator is not None:
            _run_calibrator(api, calibrator)
        return api.instance("IHostMemory", _bytes=b"plan") if model.build_ok else None

    def set_input_shape(api: Api, _self: Any, name: Any, shape: Any) -> bool:
        model.input_shape = tuple(shape)
        return model.shape_ok

    return {
        "module.__version__": lambda api: version,
        "Builder.create_network": lambda api, s, *a, **k: api.instance("INetworkDefinition"),
        "Builder.create_builder_config": lambda api, s: api.instance("IBuilderConfig"),
        "Builder.create_optimization_profile": lambda api, s: api.instance("IOptimizationProfile"),
        "Builder.build_serialized_network": build,
        "OnnxParser.parse": lambda api, s, *a, **k: model.parse_ok,
        "OnnxParser.num_errors": lambda api, s: 0 if model.parse_ok else 1,
        "OnnxParser.get_error": lambda api, s, i: api.instance("ParserError"),
        "ParserError.desc": lambda api, s: "unsupported operator",
        "IBuilderConfig.add_optimization_profile": lambda api, s, p: 0,
        "IBuilderConfig.create_timing_cache": lambda api, s, *a: api.instance("ITimingCache"),
        "IBuilderConfig.get_timing_cache": lambda api, s: api.instance("ITimingCache"),
        "IBuilderConfig.set_timing_cache": lambda api, s, *a: True,
        "IBuilderConfig.set_flag": lambda api, s, *a: None,
        "IBuilderConfig.set_memory_pool_limit": lambda api, s, *a: None,
        "IOptimizationProfile.set_shape": lambda api, s, *a: None,
        "ITimingCache.serialize": lambda api, s: api.instance("IHostMemory", _bytes=b"cache"),
        "Runtime.deserialize_cuda_engine": engine,
        "ICudaEngine.create_execution_context": lambda api, s, *a: api.instance("IExecutionContext"),
        "ICudaEngine.num_io_tensors": lambda api, s: 2,
        "ICudaEngine.num_bindings": lambda api, s: 2,
        "ICudaEngine.get_tensor_name": lambda api, s, index: _index_name(index),
        "ICudaEngine.get_binding_name": lambda api, s, index: _index_name(index),
        "ICudaEngine.get_binding_index": lambda api, s, name: EngineModel.NAMES.index(name),
        "ICudaEngine.get_tensor_mode": lambda api, s, name: api.enum_value(
            "TensorIOMode", "INPUT" if name == "image" else "OUTPUT"),
        "ICudaEngine.binding_is_input": lambda api, s, index: int(index) == 0,
        "ICudaEngine.get_tensor_dtype": lambda api, s, name: api.enum_value("DataType", "FLOAT"),
        "ICudaEngine.get_binding_dtype": lambda api, s, index: api.enum_value("DataType", "FLOAT"),
        "ICudaEngine.get_tensor_shape": lambda api, s, name: EngineModel.ENGINE_SHAPES[name],
        "ICudaEngine.get_binding_shape": lambda api, s, index: EngineModel.ENGINE_SHAPES[_index_name(index)],
        "IExecutionContext.set_input_shape": set_input_shape,
        "IExecutionContext.set_binding_shape": lambda api, s, index, shape: set_input_shape(
            api, s, _index_name(index), shape),
        "IExecutionContext.all_binding_shapes_specified": lambda api, s: model.all_shapes,
        "IExecutionContext.get_tensor_shape": lambda api, s, name: model.context_shape(name),
        "IExecutionContext.get_binding_shape": lambda api, s, index: model.context_shape(_index_name(index)),
        "IExecutionContext.set_tensor_address": lambda api, s, name, pointer: True,
        "IExecutionContext.execute_async_v3": lambda api, s, *a, **k: model.enqueue_ok,
        "IExecutionContext.execute_async_v2": lambda api, s, *a, **k: model.enqueue_ok,
    }


def tensorrt_standin(table: Dict[str, Any], model: EngineModel) -> Api:
    version = table["version"]
    return Api("TensorRT %s" % version, table["classes"], table["functions"],
               list(table.get("python", [])) + ["__version__"], tensorrt_behaviours(version, model))


# ------------------------------------------------------------------------------------------------ CUDA stand-ins
def _pycuda_entry(entry: Dict[str, Any]) -> Dict[str, Any]:
    overload = {"arity": entry.get("arity")}
    if entry.get("args") is not None:
        overload["args"] = entry["args"]
        overload["defaults"] = {n: "?" for n in entry.get("optional", [])}
    normalized = {"kind": entry.get("kind", "method"), "overloads": [overload]}
    if entry.get("kind") == "property":
        normalized = {"kind": "property", "writable": entry.get("writable", False)}
    return normalized


def pycuda_standin(table: Dict[str, Any]) -> Api:
    classes = {name: {"members": {m: _pycuda_entry(e) for m, e in members.items()}}
               for name, members in table["classes"].items()}
    functions = {name: _pycuda_entry(e) for name, e in table["functions"].items()}
    behaviours = {
        "init": lambda api, s, *a: None,
        "mem_alloc": lambda api, s, nbytes: api.instance("DeviceAllocation", _int=0x2000),
        "memcpy_htod": lambda api, s, *a, **k: None,
        "memcpy_dtoh": lambda api, s, *a, **k: None,
        "Device.name": lambda api, s: "stand-in GPU",
        "Device.compute_capability": lambda api, s: (7, 2),
        "Device.retain_primary_context": lambda api, s: api.instance("Context"),
        "Context.push": lambda api, s: None,
        "Context.pop": lambda api, s: None,
        "Stream.synchronize": lambda api, s: None,
        "Stream.handle": lambda api, s: 0x3000,
        "DeviceAllocation.free": lambda api, s: None,
    }
    return Api("pycuda %s" % table["version"], classes, functions, table.get("python", []), behaviours)


class CudaPythonApi(object):
    """A cuda-python runtime module: each function checks its argument count and returns a tuple of exactly as many
    values as that release returns, (cudaError_t.cudaSuccess, ...)."""

    VALUES = {"cudaMalloc": lambda: 0x4000, "cudaStreamCreate": lambda: 0x5000}

    def __init__(self, table: Dict[str, Any]) -> None:
        self.table = table
        self.label = "cuda-python %s" % table["version"]
        self.recorder = Recorder(self.label)

    def module(self, name: str) -> types.ModuleType:
        api, table, recorder = self, self.table, self.recorder
        enums = {enum: StandInEnum(enum, members, recorder) for enum, members in table["enums"].items()}

        class CudaModule(types.ModuleType):
            def __getattr__(self, attr: str) -> Any:
                if attr.startswith("__"):
                    raise AttributeError(attr)
                if attr in enums:
                    recorder.checked(attr)
                    return enums[attr]
                if attr in table["functions"]:
                    recorder.checked(attr)
                    return api.function(attr, enums)
                recorder.fail("%s.%s does not exist in %s" % (name, attr, api.label))

        module = CudaModule(name)
        module.__file__ = "<%s stand-in, %s>" % (name, self.label)
        return module

    def function(self, name: str, enums: Dict[str, Any]) -> Callable[..., Any]:
        spec = self.table["functions"][name]
        member = Member("", name, {"kind": "function", "overloads": [
            {"args": spec["args"], "arity": len(spec["args"]),
             "defaults": {n: "?" for n in spec.get("optional", [])}}]})

        def call(*args: Any, **kwargs: Any) -> Tuple[Any, ...]:
            check_call(self.recorder, member, args, kwargs)
            count = spec.get("returns") or 1
            values = [self.value(name)] * (count - 1)
            return (enums["cudaError_t"].cudaSuccess,) + tuple(values)

        return call

    def value(self, name: str) -> Any:
        if name == "cudaGetDeviceProperties":
            return DeviceProp(self.table["classes"].get("cudaDeviceProp", []), self.recorder)
        return self.VALUES.get(name, lambda: 0x6000)()


class StandInEnum(object):
    def __init__(self, name: str, members: Sequence[str], recorder: Recorder) -> None:
        self._name = name
        self._members = {m: EnumValue(name, m, i) for i, m in enumerate(members)}
        self._recorder = recorder

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_"):
            raise AttributeError(attr)
        if attr not in self._members:
            self._recorder.fail("%s.%s does not exist in %s" % (self._name, attr, self._recorder.label))
        self._recorder.checked("%s.%s" % (self._name, attr))
        return self._members[attr]


class DeviceProp(object):
    VALUES = {"name": b"stand-in GPU\0\0", "major": 7, "minor": 2}

    def __init__(self, attributes: Sequence[str], recorder: Recorder) -> None:
        self._attributes = set(attributes)
        self._recorder = recorder

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_"):
            raise AttributeError(attr)
        if attr not in self._attributes:
            self._recorder.fail("cudaDeviceProp.%s does not exist in %s" % (attr, self._recorder.label))
        self._recorder.checked("cudaDeviceProp." + attr)
        return self.VALUES.get(attr, 0)


# ---------------------------------------------------------------------------------------------------- injection
STANDIN_MODULES = ("tensorrt", "pycuda", "pycuda.driver", "cuda", "cuda.bindings", "cuda.bindings.runtime",
                   "cuda.cudart")


@contextlib.contextmanager
def injected(modules: Dict[str, Optional[types.ModuleType]]):
    """sys.modules entries replaced for the duration (None: the import fails), restored afterwards."""
    saved = {name: sys.modules.get(name, _ABSENT) for name in STANDIN_MODULES}
    try:
        for name in STANDIN_MODULES:
            sys.modules[name] = modules.get(name)  # type: ignore
        yield
    finally:
        for name, value in saved.items():
            if value is _ABSENT:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = value


_ABSENT = object()


def package_module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = []  # type: ignore
    return module


def cuda_modules(binding: Any) -> Dict[str, Optional[types.ModuleType]]:
    """sys.modules for one CUDA binding stand-in (the other binding absent)."""
    if isinstance(binding, Api):  # pycuda
        pycuda = package_module("pycuda")
        driver = binding.module("pycuda.driver")
        pycuda.driver = driver  # type: ignore
        return {"pycuda": pycuda, "pycuda.driver": driver}
    table = binding.table
    modules = {"pycuda": None}  # type: Dict[str, Optional[types.ModuleType]]
    cuda = package_module("cuda")
    modules["cuda"] = cuda
    if table["module"] == "cuda.bindings.runtime":
        bindings = package_module("cuda.bindings")
        bindings.runtime = binding.module("cuda.bindings.runtime")  # type: ignore
        cuda.bindings = bindings  # type: ignore
        modules.update({"cuda.bindings": bindings, "cuda.bindings.runtime": bindings.runtime})
    else:
        modules["cuda.bindings"] = None
    if table["module"] == "cuda.cudart":
        cuda.cudart = binding.module("cuda.cudart")  # type: ignore
        modules["cuda.cudart"] = cuda.cudart
    return modules


# ----------------------------------------------------------------------------------------------------- the driver
class Result(Recorder):
    """What the scenarios of one API version found, and how many calls they checked."""

    def __init__(self, label: str) -> None:
        Recorder.__init__(self, label)
        self.scenarios = 0
        self.refused = None  # type: Optional[str]

    def absorb(self, recorder: Recorder, count: bool = True) -> None:
        """Takes the findings of a stand-in's recorder (or of another Result) and, with count, its checked call
        sites; the recorder is emptied for the next scenario."""
        for line in recorder.errors:
            if line not in self.errors:
                self.errors.append(line)
        for line in recorder.warnings:
            if line not in self.warnings:
                self.warnings.append(line)
        if count:
            self.sites |= recorder.sites
            self.checks += recorder.checks
            self.scenarios += getattr(recorder, "scenarios", 0)
        recorder.errors, recorder.warnings, recorder.sites, recorder.checks = [], [], set(), 0

    def to_json(self) -> Dict[str, Any]:
        return {"api": self.label, "call_sites": len(self.sites), "checks": self.checks,
                "scenarios": self.scenarios, "errors": self.errors, "warnings": self.warnings}


def run_scenario(result: Result, recorders: Sequence[Recorder], body: Callable[[], Any],
                 expect: Optional[str] = None) -> None:
    """Runs one path; a stand-in refusal, an unexpected exception (e.g. unpacking the wrong number of values) or a
    missing expected refusal becomes a finding labelled with the versions in play."""
    from ladon_deploy.errors import LadonError

    label = " + ".join(r.label for r in recorders)
    result.scenarios += 1
    try:
        body()
    except Misuse:
        pass
    except LadonError as exc:
        if expect is None or expect not in str(exc):
            recorders[0].errors.append("%s: unexpected refusal with %s: %s" % (traceback_site(exc), label, exc))
    except Exception as exc:  # the package's own error with these APIs: the finding is the point
        recorders[0].errors.append("%s: %s with %s: %s" % (traceback_site(exc), type(exc).__name__, label, exc))
    else:
        if expect is not None:
            recorders[0].errors.append("<driver>: %s: expected a refusal containing %r" % (label, expect))
    for index, recorder in enumerate(recorders):
        result.absorb(recorder, count=index == 0)  # a CUDA binding's calls are counted by drive_cuda


class FakeBatches(object):
    """The calibrator's data source reduced to what TensorRT's calls reach (two batches, no cache)."""

    batch_size = 1
    input_name = "image"
    nbytes = 1 * 3 * 64 * 64 * 4

    def __init__(self) -> None:
        self.left = 2

    def next_batch(self) -> Optional[Dict[str, Any]]:
        import numpy as np

        if not self.left:
            return None
        self.left -= 1
        return {"image": np.zeros((1, 3, 64, 64), np.float32)}


class FakePolicy(object):
    def read(self) -> Optional[bytes]:
        return None

    def write(self, _data: bytes) -> None:
        pass


PROFILE = {"image": {"min": [1, 3, 32, 32], "opt": [1, 3, 64, 64], "max": [1, 3, 64, 64]}}
# (EngineModel knob, expected refusal) per failure branch.
FAILURES = (({"parse_ok": False}, "cannot parse"), ({"build_ok": False}, "failed to build"),
            ({"deserialize_ok": False}, "could not deserialize"), ({"shape_ok": False}, "refused input"),
            ({"all_shapes": False}, "not every input shape"), ({"enqueue_ok": False}, "failed to enqueue"))


def drive_tensorrt(table: Dict[str, Any], cuda_binding: Any, onnx_path: str, full: bool = True) -> Result:
    """Every path of the builder, runner and calibrator that this TensorRT version reaches (full), or only those that
    touch the CUDA binding (the runner, the calibrator's batches) for a further binding."""
    from ladon_deploy.calibration import trt_calibrator
    from ladon_deploy.engines import build, tensorrt_api as trt_layer, tensorrt_runner
    from ladon_deploy.errors import LadonError

    result = Result("TensorRT %s" % table["version"])
    model = EngineModel()
    api = tensorrt_standin(table, model)
    try:
        generation = trt_layer.Generation(table["version"])
    except LadonError as exc:
        result.refused = str(exc)
        return result
    modules = dict(cuda_modules(cuda_binding), tensorrt=api.module("tensorrt"))
    recorders = [api.recorder, cuda_binding.recorder]

    def build_once(precision: str, dla_core: Optional[int], workspace: Optional[int]) -> Callable[[], Any]:
        def body() -> None:
            trt = trt_layer.import_tensorrt("server")
            calibrator = None
            if precision == "int8" and generation.calibrators:
                cuda = trt_layer.open_cuda("server")
                calibrator = trt_calibrator.entropy_calibrator(trt, FakeBatches(), FakePolicy(), cuda)
            compiler = build.TensorRTCompiler(trt, generation, "server", dla_core, calibrator)
            plan, cache = compiler.compile(onnx_path, PROFILE, precision, workspace, b"" if workspace else None)
            assert isinstance(plan, bytes) and isinstance(cache, bytes)
            compiler.open(plan, PROFILE).close()
            if calibrator is not None:
                cuda.close()  # frees the calibrator's device batch
        return body

    def run_once(dla_core: Optional[int]) -> Callable[[], Any]:
        def body() -> None:
            import numpy as np

            runner = tensorrt_runner.TensorRTRunner(b"plan", "server", PROFILE, dla_core)
            try:
                outputs = runner.run({"image": np.zeros((1, 3, 64, 64), np.float32)})
                assert outputs["latent"].shape == (1, 8, 16, 16)
            finally:
                runner.close()
        return body

    with injected(modules):
        for precision in ("fp32", "fp16", "int8"):
            for dla_core in (None, 0):
                try:
                    generation.check_precision(precision, dla_core)
                except LadonError:
                    continue
                for workspace in (None, 1 << 28):
                    if full or (precision == "int8" and dla_core is None and workspace is None):
                        run_scenario(result, recorders, build_once(precision, dla_core, workspace))
        for dla_core in (None, 0):
            if full or dla_core is None:
                run_scenario(result, recorders, run_once(dla_core))
        for knobs, expect in FAILURES if full else ():
            if "all_shapes" in knobs and generation.named_tensors:
                continue  # all_binding_shapes_specified is asked on the bindings path only
            for attribute, value in knobs.items():
                setattr(model, attribute, value)
            if "parse_ok" in knobs or "build_ok" in knobs:
                run_scenario(result, recorders, build_once("fp32", None, None), expect)
            else:
                run_scenario(result, recorders, run_once(None), expect)
            for attribute in knobs:
                setattr(model, attribute, getattr(EngineModel(), attribute))
    return result


def drive_cuda(binding: Any) -> Result:
    """Every call of the CUDA binding layer (the one tensorrt_api opens for this binding)."""
    from ladon_deploy.engines import tensorrt_api as trt_layer

    result = Result(binding.label)

    def body() -> None:
        import numpy as np

        assert trt_layer.find_cuda_binding("jetson-nano").name == (
            "pycuda" if isinstance(binding, Api) else "cuda-python")
        cuda = trt_layer.open_cuda("server")
        host = np.zeros(16, np.float32)
        pointer = cuda.alloc(host.nbytes)
        cuda.to_device(pointer, host)
        cuda.to_host(host, pointer)
        cuda.synchronize()
        int(cuda.stream_handle)
        name, capability = cuda.gpu()
        assert name == "stand-in GPU" and capability == "7.2", (name, capability)
        cuda.free(pointer)
        cuda.close()

    with injected(cuda_modules(binding)):
        run_scenario(result, [binding.recorder], body)
    return result


def cuda_bindings() -> List[Any]:
    bindings = []  # type: List[Any]
    for name in table_names("pycuda-"):
        bindings.append(pycuda_standin(load_table(name)))
    for name in table_names("cuda-python-"):
        bindings.append(CudaPythonApi(load_table(name)))
    return bindings


# ------------------------------------------------------------------------------------------- coverage of the calls
# The functions that call TensorRT or a CUDA binding (module, qualified name): the driver must reach every line.
DRIVEN = (
    ("ladon_deploy.engines.tensorrt_api", "import_tensorrt"),
    ("ladon_deploy.engines.tensorrt_api", "tensorrt_version"),
    ("ladon_deploy.engines.tensorrt_api", "log_severity"),
    ("ladon_deploy.engines.tensorrt_api", "build_serialized_engine"),
    ("ladon_deploy.engines.tensorrt_api", "LoadedEngine"),
    ("ladon_deploy.engines.tensorrt_api", "PycudaBinding"),
    ("ladon_deploy.engines.tensorrt_api", "CudaPythonBinding"),
    ("ladon_deploy.engines.tensorrt_api", "_import_cudart"),
    ("ladon_deploy.engines.tensorrt_api", "_import_pycuda"),
    ("ladon_deploy.engines.build", "TensorRTCompiler"),
    ("ladon_deploy.calibration.trt_calibrator", "entropy_calibrator"),
    ("ladon_deploy.calibration.trt_calibrator", "calibrator_methods"),
)
# Importing one of these is calling the API (a bare `import pycuda` for its version string is not).
API_MODULES = ("tensorrt", "pycuda.driver", "cuda.cudart", "cuda.bindings.runtime")


def _source_path(module: str) -> str:
    return os.path.join(ROOT_DIR, *module.split(".")) + ".py"


def _driven_nodes() -> Dict[str, List[ast.AST]]:
    nodes = {}  # type: Dict[str, List[ast.AST]]
    for module, qualname in DRIVEN:
        path = _source_path(module)
        tree = ast.parse(open(path).read())
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == qualname:
                nodes.setdefault(path, []).append(node)
    return nodes


def executable_lines(node: ast.AST) -> set:
    """Statement lines inside the functions of `node` (a function or a class), raise statements excluded: they are
    the failure branches' messages (the branches themselves are driven; a message is not an API call). Class-body
    lines run once at import and say nothing about the calls."""
    lines = set()
    functions = [n for n in ast.walk(node) if isinstance(n, ast.FunctionDef)]
    for function in functions:
        for child in ast.walk(function):
            if child is function or not isinstance(child, ast.stmt):
                continue
            if isinstance(child, (ast.FunctionDef, ast.ClassDef, ast.Raise, ast.Pass)):
                continue
            if isinstance(child, ast.Expr) and isinstance(getattr(child, "value", None), ast.Constant) and \
                    isinstance(child.value.value, str):
                continue  # a docstring
            lines.add(child.lineno)
    return lines


def coverage_findings(executed: Dict[str, set]) -> List[str]:
    """Lines of the driven functions no scenario reached, and functions outside DRIVEN that touch the APIs."""
    findings = []
    driven = _driven_nodes()
    for module, qualname in DRIVEN:
        if not any(getattr(n, "name", None) == qualname for n in driven.get(_source_path(module), [])):
            findings.append("%s: %s is listed as driven but does not exist" % (module, qualname))
    for path, nodes in driven.items():
        for node in nodes:
            for line in sorted(executable_lines(node) - executed.get(path, set())):
                findings.append("%s:%d: never reached by the conformance driver (a call nothing checks)"
                                % (os.path.relpath(path, ROOT_DIR), line))
    driven_ranges = {(path, n.lineno, getattr(n, "end_lineno", n.lineno)) for path, ns in driven.items() for n in ns}
    for directory, _, files in os.walk(PACKAGE_DIR):
        for filename in sorted(files):
            path = os.path.join(directory, filename)
            if not filename.endswith(".py") or os.path.abspath(path) == THIS_FILE:
                continue
            tree = ast.parse(open(path).read())
            for node in ast.walk(tree):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    if isinstance(node, ast.ImportFrom):
                        names = [node.module or ""] + ["%s.%s" % (node.module, a.name) for a in node.names]
                    else:
                        names = [a.name for a in node.names]
                    names = [n for n in names if any(n == m or n.startswith(m + ".") for m in API_MODULES)]
                    if names:
                        if not any(p == path and lo <= node.lineno <= hi for p, lo, hi in driven_ranges):
                            findings.append("%s:%d: imports %s outside the functions the conformance driver "
                                            "reaches (add it to api_check.DRIVEN)"
                                            % (os.path.relpath(path, ROOT_DIR), node.lineno, ", ".join(names)))
                elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                        node.value.id == "trt":
                    if not any(p == path and lo <= node.lineno <= hi for p, lo, hi in driven_ranges):
                        findings.append("%s:%d: trt.%s outside the functions the conformance driver reaches"
                                        % (os.path.relpath(path, ROOT_DIR), node.lineno, node.attr))
    return findings


@contextlib.contextmanager
def line_tracer(paths: Sequence[str], executed: Dict[str, set]):
    wanted = set(paths)

    def tracer(frame: Any, event: str, _arg: Any) -> Any:
        filename = frame.f_code.co_filename
        if filename not in wanted:
            return None

        def local(frame: Any, event: str, _arg: Any) -> Any:
            if event == "line":
                executed.setdefault(filename, set()).add(frame.f_lineno)
            return local
        return local

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        yield
    finally:
        sys.settrace(previous)


# --------------------------------------------------------------------------------------------------- ONNX Runtime
def onnxruntime_findings() -> Tuple[List[str], int]:
    """The execution-provider option names the ONNX Runtime runners pass, per onnxruntime release the targets use."""
    from ladon_deploy.engines import ort_runner

    table = load_table("onnxruntime-ep-options.json")
    findings, checked = [], 0
    for release, providers in sorted(table["releases"].items(), key=lambda item: version_key(item[0])):
        for precision in ("fp32", "fp16"):
            for cache in (None, "/tmp/cache"):
                options = ort_runner.tensorrt_provider_options(cache, precision, release)
                known = set(providers["TensorrtExecutionProvider"])
                for name in sorted(options):
                    checked += 1
                    if name not in known:
                        findings.append("%s: TensorrtExecutionProvider option %s does not exist in onnxruntime %s"
                                        % (_literal_site(ort_runner.__file__, name), name, release))
        for provider in set(p for specs in ort_runner.PROVIDERS.values() for p in specs) - {"CPUExecutionProvider"}:
            checked += 1
            if provider not in providers["providers"]:
                findings.append("%s: execution provider %s does not exist in onnxruntime %s"
                                % (_literal_site(ort_runner.__file__, provider), provider, release))
    return sorted(set(findings)), checked


def _literal_site(path: str, literal: str) -> str:
    """file:line of the first line of `path` holding the string literal (where an option name is written)."""
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            if '"%s"' % literal in line:
                return "%s:%d" % (os.path.relpath(path, ROOT_DIR), number)
    return os.path.relpath(path, ROOT_DIR)


# ------------------------------------------------------------------------------------------------------ the report
def targets_findings() -> List[str]:
    """Each TensorRT version the targets table names (its check version and range ends) has a table."""
    from ladon_deploy.engines.targets import TARGETS

    versions = [load_table(n)["version"] for n in table_names("tensorrt-")]
    findings = []
    for target in TARGETS.values():
        named = [target.trt] + list(target.trt_supported or ()) if target.trt else []
        for version in named:
            major_minor = version_key(version)[:2]
            if major_minor[0] >= 11 and major_minor[1] > 50:
                continue  # an open upper end ("11.99"): the newest 11.x table stands for it
            if not any(version_key(v)[:2] == major_minor for v in versions):
                findings.append("ladon_deploy/engines/targets.py: target %s names TensorRT %s, which has no API "
                                "table" % (target.name, version))
    return findings


def run_checks() -> Dict[str, Any]:
    """Every table driven; returns the report (see main)."""
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        onnx_path = os.path.join(scratch, "stage.onnx")  # the parser stand-in reads the bytes only
        with open(onnx_path, "wb") as handle:
            handle.write(b"not an ONNX model: the stand-in parser does not read it")
        return _run_checks(onnx_path)


def _run_checks(onnx_path: str) -> Dict[str, Any]:
    bindings = cuda_bindings()
    executed = {}  # type: Dict[str, set]
    paths = [p for p in _driven_nodes()]
    results = []
    with line_tracer(paths, executed):
        for name in sorted(table_names("tensorrt-"), key=lambda n: version_key(n[len("tensorrt-"):-5])):
            table = load_table(name)
            for binding in bindings:
                result = drive_tensorrt(table, binding, onnx_path, full=binding is bindings[0])
                if binding is bindings[0]:
                    results.append(result)
                else:
                    results[-1].absorb(result)
        cuda_results = [drive_cuda(binding) for binding in bindings]
    ort_errors, ort_checked = onnxruntime_findings()
    coverage = coverage_findings(executed)
    targets = targets_findings()
    report = {"tensorrt": [], "cuda": [r.to_json() for r in cuda_results],
              "onnxruntime": {"checks": ort_checked, "errors": ort_errors},
              "coverage": coverage, "targets": targets}
    for result in results:
        entry = result.to_json()
        if result.refused:
            entry["refused"] = result.refused
        report["tensorrt"].append(entry)
    report["ok"] = not (coverage or targets or ort_errors or any(r["errors"] for r in report["tensorrt"]) or
                        any(r["errors"] for r in report["cuda"]))
    return report


def format_report(report: Dict[str, Any]) -> str:
    lines = ["API conformance (names, keywords, argument counts, properties vs methods, overrides; not execution)"]
    for entry in report["tensorrt"]:
        if "refused" in entry:
            lines.append("%-16s refused by the toolkit: %s" % (entry["api"], entry["refused"]))
            continue
        lines.append("%-16s %4d checks at %3d call sites over %3d scenarios, %d errors, %d deprecation warnings"
                     % (entry["api"], entry["checks"], entry["call_sites"], entry["scenarios"], len(entry["errors"]),
                        len(entry["warnings"])))
    for entry in report["cuda"]:
        lines.append("%-16s %4d checks at %3d call sites, %d errors" % (entry["api"], entry["checks"],
                                                                        entry["call_sites"], len(entry["errors"])))
    lines.append("%-16s %4d option names checked, %d errors" % ("onnxruntime EPs", report["onnxruntime"]["checks"],
                                                               len(report["onnxruntime"]["errors"])))
    problems = []
    for entry in report["tensorrt"] + report["cuda"]:
        problems.extend(entry["errors"])
    problems += report["onnxruntime"]["errors"] + report["coverage"] + report["targets"]
    warnings = sorted(set(w for entry in report["tensorrt"] for w in entry["warnings"]))
    lines.extend("warning: " + w for w in warnings)
    lines.extend(problems)
    lines.append("ok" if report["ok"] else "FAILED: %d problems" % len(problems))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ladon_deploy.engines.api_check",
                                     description="API conformance of every TensorRT / CUDA binding call, per version "
                                                 "(no TensorRT needed; nothing is executed on a GPU)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    report = run_checks()
    print(json.dumps(report, indent=1, sort_keys=True) if args.json else format_report(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
