"""Our logic around the TensorRT calls, checked without TensorRT.

Stand-ins for `tensorrt` objects appear here only where a test is about what OUR code does with TensorRT's
answers: a None from `create_network` becomes an `EngineBuildError`, a failed factory a
`BackendUnavailableError`, the plan is fed to a stream reader in bounded chunks and the file is closed. They
prove nothing about what TensorRT itself accepts (engines/README.md lists what is unverified).
"""

from __future__ import annotations

import enum
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_engines import _fake_export

from cascade_trt.artifacts import engine_path, read_manifest, write_json
from cascade_trt.backends.tensorrt_backend import check_engine_source
from cascade_trt.configs import FULL
from cascade_trt.engines import builder
from cascade_trt.engines.availability import construct
from cascade_trt.engines.builder import BuildOptions, EngineBuildError, build_engine, plan_builds
from cascade_trt.engines.manifest import Target, engine_manifest, onnx_identity, weights_source
from cascade_trt.engines.plan_reader import PlanFile, deserialize_plan
from cascade_trt.engines.profiles import BuildShapes
from cascade_trt.errors import ArtifactMismatchError, BackendUnavailableError
from cascade_trt.provenance import FINGERPRINT_VERSION, checkpoint_fingerprint, export_source
from cascade_trt.stages import BatchRange, SizeRange

SHAPES = BuildShapes(SizeRange.square(512, 1024, 1536), BatchRange(1, 1, 4))
H100 = Target("10.8.0.43", "NVIDIA H100 80GB HBM3", "9.0")


# --- streaming a plan into TensorRT ------------------------------------------------------------------------


@pytest.fixture
def plan_path(tmp_path: Path) -> Path:
    path = tmp_path / "stage_c.plan"
    path.write_bytes(os.urandom(10_000))
    return path


class SeekPosition(enum.Enum):  # the shape of `trt.SeekPosition`
    SET = 0
    CUR = 1
    END = 2


class ReaderBase:  # where `trt.IStreamReaderV2` / `trt.IStreamReader` sit: a class to subclass
    def __init__(self) -> None:
        self.initialised = True


class FakeRuntime:
    """Pulls a plan through a reader the way TensorRT's binding does (asks again until a range is filled)."""

    def __init__(self, *, ranges: list[int] | None = None, answer: object = "engine", takes_readers=True):
        self.ranges, self.answer, self.takes_readers = ranges or [], answer, takes_readers
        self.chunks: list[int] = []
        self.received: bytes = b""

    def deserialize_cuda_engine(self, source):
        if isinstance(source, bytes | bytearray | memoryview):
            self.received = bytes(source)
            return self.answer
        if not self.takes_readers:
            raise TypeError("deserialize_cuda_engine(): incompatible function arguments")
        assert source.initialised, "the reader's base class must be initialised (a pybind11 trampoline)"
        if hasattr(source, "seek"):  # v2: peek at a header, seek back, then read in ranges
            head = bytes(source.read(16, 0))
            assert source.seek(0, SeekPosition.SET) and not source.seek(10**9, SeekPosition.SET)
            out = bytearray()
            for size in self.ranges:
                while size:  # the binding's loop: partial answers are asked for again
                    piece = bytes(source.read(size, 0))
                    self.chunks.append(len(piece))
                    if not piece:
                        break
                    out += piece
                    size -= len(piece)
            assert bytes(out[:16]) == head
            self.received = bytes(out)
        else:  # v1: each read answers exactly what is asked
            self.received = b"".join(bytes(source.read(n)) for n in self.ranges)
        return self.answer


def test_plan_file_reads_bounded_chunks_and_seeks(plan_path: Path) -> None:
    plan = PlanFile(plan_path, chunk=4096)
    data = plan_path.read_bytes()
    assert bytes(plan.read_chunk(10_000)) == data[:4096]  # capped at the chunk
    assert plan.seek(-100, os.SEEK_END) and bytes(plan.read_chunk(4096)) == data[-100:]
    assert bytes(plan.read_chunk(4096)) == b""  # the end
    assert plan.seek(5, os.SEEK_SET) and plan.seek(5, os.SEEK_CUR) and plan.read_exact(3) == data[10:13]
    assert not plan.seek(-1, os.SEEK_SET) and not plan.seek(1, os.SEEK_END)
    plan.close()
    assert plan.closed
    with pytest.raises(ValueError, match="is closed"):
        plan.read_chunk(1)


def test_v2_reader_streams_the_plan_in_chunks_and_closes_it(plan_path: Path, monkeypatch) -> None:
    opened: list[PlanFile] = []
    original = PlanFile.__init__

    def record(self, *args, **kwargs):
        original(self, *args, **kwargs)
        opened.append(self)

    monkeypatch.setattr(PlanFile, "__init__", record)
    trt = SimpleNamespace(__version__="10.8.0", IStreamReaderV2=ReaderBase, SeekPosition=SeekPosition)
    runtime = FakeRuntime(ranges=[3000, 7000])
    assert deserialize_plan(trt, runtime, plan_path, chunk=1024) == "engine"
    assert runtime.received == plan_path.read_bytes()
    assert max(runtime.chunks) == 1024, "no answer larger than the chunk: the plan is never held whole"
    assert opened[0].closed


def test_v1_reader_answers_what_is_asked(plan_path: Path) -> None:
    trt = SimpleNamespace(__version__="10.1.0", IStreamReader=ReaderBase)
    runtime = FakeRuntime(ranges=[6000, 4000])
    assert deserialize_plan(trt, runtime, plan_path) == "engine"
    assert runtime.received == plan_path.read_bytes()


@pytest.mark.parametrize(
    "trt, runtime",
    [
        (SimpleNamespace(__version__="10.1.0"), FakeRuntime()),  # no reader class at all
        (SimpleNamespace(__version__="10.1.0", IStreamReader=ReaderBase), FakeRuntime(takes_readers=False)),
    ],
    ids=["no-reader-class", "binding-takes-no-reader"],
)
def test_without_a_usable_reader_the_plan_goes_as_one_buffer(plan_path: Path, trt, runtime) -> None:
    assert deserialize_plan(trt, runtime, plan_path) == "engine"
    assert runtime.received == plan_path.read_bytes()


def test_a_plan_tensorrt_refuses_names_the_rebuild_and_is_closed(plan_path: Path, monkeypatch) -> None:
    closed: list[bool] = []
    close = PlanFile.close
    monkeypatch.setattr(PlanFile, "close", lambda self: (close(self), closed.append(True))[0])
    trt = SimpleNamespace(__version__="10.8.0", IStreamReaderV2=ReaderBase, SeekPosition=SeekPosition)
    with pytest.raises(
        ArtifactMismatchError, match=r"could not deserialize .*rebuild it: `cascade-trt build X`"
    ):
        deserialize_plan(
            trt, FakeRuntime(ranges=[10_000], answer=None), plan_path, rebuild="cascade-trt build X"
        )
    assert closed == [True]

    class Exploding(FakeRuntime):
        def deserialize_cuda_engine(self, source):
            raise RuntimeError("CUDA out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        deserialize_plan(trt, Exploding(), plan_path)
    assert closed == [True, True], "the file is closed when TensorRT raises too"


# --- TensorRT's None / False answers in the build path -----------------------------------------------------


def _plan(tmp_path: Path):
    _fake_export(tmp_path / "onnx", FULL, "stage_c", "bf16")
    (plan,) = plan_builds(tmp_path / "onnx", options=BuildOptions(SHAPES))
    return plan


def test_create_network_returning_none_is_a_build_error(tmp_path: Path) -> None:
    trt = SimpleNamespace(
        __version__="10.8.0.43", NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=5)
    )
    asked: list[int] = []
    fake_builder = SimpleNamespace(create_network=lambda flags: asked.append(flags))  # returns None
    with pytest.raises(
        EngineBuildError, match=r"failed creating the network of stage_c \(creation flags 0x20\)"
    ):
        builder._parse(trt, fake_builder, None, _plan(tmp_path), strongly_typed=True)
    assert asked == [1 << 5], "TensorRT 10 is asked for a strongly typed network"


def test_builder_config_and_profile_failures_are_build_errors(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    options = BuildOptions(SHAPES)
    no_config = SimpleNamespace(create_builder_config=lambda: None)
    with pytest.raises(EngineBuildError, match="failed creating a builder config"):
        builder._builder_config(None, no_config, plan, options)

    class Profile:
        def set_shape(self, name, lo, opt, hi) -> None:
            self.set = True

        def __bool__(self) -> bool:  # TensorRT's validity check
            return getattr(self, "set", False)

    config = SimpleNamespace(add_optimization_profile=lambda profile: -1)
    refusing = SimpleNamespace(create_builder_config=lambda: config, create_optimization_profile=Profile)
    with pytest.raises(EngineBuildError, match="TensorRT refused the optimization profile of stage_c"):
        builder._builder_config(None, refusing, plan, options)
    no_profile = SimpleNamespace(
        create_builder_config=lambda: config, create_optimization_profile=lambda: None
    )
    with pytest.raises(EngineBuildError, match="failed creating an optimization profile"):
        builder._builder_config(None, no_profile, plan, options)


def test_a_tensorrt_factory_that_fails_says_to_check_the_gpu() -> None:
    def nullptr(logger):
        raise TypeError("pybind11::init(): factory function returned nullptr")

    trt = SimpleNamespace(__version__="10.8.0.43", Builder=nullptr, Runtime=lambda logger: None)
    with pytest.raises(BackendUnavailableError, match=r"could not create a Builder \(pybind11.*nvidia-smi"):
        construct(trt, "Builder", "logger")
    with pytest.raises(BackendUnavailableError, match="could not create a Runtime"):
        construct(trt, "Runtime", "logger")


# --- the checkpoints' fingerprint, from export to engine to runtime ---------------------------------------


def test_engine_manifest_carries_the_export_source_and_old_engines_are_rebuilt_once(
    tmp_path: Path, monkeypatch
) -> None:
    builds: list[str] = []
    monkeypatch.setattr(
        builder, "_build_plan", lambda trt, plan, options, *, log_step: builds.append(1) or b"E"
    )
    plan = _plan(tmp_path)
    source = {
        "checkpoint": "stabilityai/stable-cascade-prior",
        "kind": "prior",
        "subfolder": "prior",
        "fingerprint_version": FINGERPRINT_VERSION,
    }
    plan.stage.manifest["source"].update(source, fingerprint="0123456789abcdef")
    options = BuildOptions(SHAPES)
    out = build_engine(plan, tmp_path / "engines", trt=None, target=H100, options=options, onnx_dir="onnx")
    assert read_manifest(out)["source"] == {**source, "fingerprint": "0123456789abcdef"}
    assert "config" not in read_manifest(out)["source"]  # the export manifest keeps the architecture
    build_engine(plan, tmp_path / "engines", trt=None, target=H100, options=options, onnx_dir="onnx")
    assert builds == [1], "same content key and source: kept"
    old = {**read_manifest(out), "source": None}  # as an engine built before manifests named the weights
    write_json(out.with_suffix(".json"), old)
    build_engine(plan, tmp_path / "engines", trt=None, target=H100, options=options, onnx_dir="onnx")
    assert builds == [1, 1] and read_manifest(out)["source"]["fingerprint"] == "0123456789abcdef"


def test_runtime_refuses_an_engine_built_from_other_weights(tmp_path: Path, tiny_checkpoints) -> None:
    """No ONNX directory needed: the engine's own manifest names the weights, compared with the checkpoints
    the pipeline is given; the error names the export and the build that redo it."""
    source = weights_source({"source": export_source(tiny_checkpoints, "stage_b")})
    assert source["fingerprint"] == checkpoint_fingerprint(tiny_checkpoints.location("stage_b").path)
    manifest = engine_manifest(
        stage="stage_b",
        precision="fp16",
        onnx=onnx_identity({"files": {"onnx": {"sha256": "0" * 64}}}),
        shapes=SHAPES,
        profiles={},
        flags=BuildOptions(SHAPES).flags(),
        passes=(),
        target=H100,
        onnx_dir="onnx-gpu",
        source=source,
    )
    engine = engine_path(tmp_path, "stage_b")
    check_engine_source(manifest, engine, tiny_checkpoints)  # the same weights: fine
    check_engine_source(manifest, engine, None)  # random-weight components: nothing to compare
    check_engine_source({**manifest, "source": None}, engine, tiny_checkpoints)  # no record: left alone
    other = {**manifest, "source": {**source, "checkpoint": "other/decoder", "fingerprint": "f" * 16}}
    with pytest.raises(ArtifactMismatchError) as info:
        check_engine_source(other, engine, tiny_checkpoints)
    text = str(info.value)
    assert (
        f"{engine} was built from other weights (other/decoder, decoder) than the decoder given here" in text
    )
    assert "`cascade-trt export --prior P --decoder D --out onnx-gpu --stages stage_b`" in text
    assert "then rebuild it: `cascade-trt build --onnx onnx-gpu" in text and "--stages stage_b" in text
