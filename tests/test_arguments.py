"""Arguments checked before any work: devices, output directories, options a backend would ignore.

Each bad value must end as one line naming the argument and what to pass instead, not as a traceback from
deep inside a loader after minutes of work.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from pipeline_helpers import allocated

from cascade_trt import CascadePipeline
from cascade_trt.artifacts import check_output_dir
from cascade_trt.cli import main
from cascade_trt.configs import TINY
from cascade_trt.devices import check_device
from cascade_trt.errors import BackendUnavailableError, ConfigError, ShapeError
from cascade_trt.random_weights import random_components


def test_devices_are_checked_in_the_users_terms() -> None:
    assert check_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="'gpu' is not a device: pass 'cpu', 'cuda' or 'cuda:N'"):
        check_device("gpu")
    with pytest.raises(ConfigError, match="runs on 'cpu' or an NVIDIA GPU"):
        check_device("meta")
    if torch.cuda.is_available():
        assert check_device("cuda").type == "cuda"
        with pytest.raises(ConfigError, match=r"but this machine has \d+ CUDA device\(s\): cuda:0 to cuda:"):
            check_device(f"cuda:{torch.cuda.device_count()}")
    else:
        with pytest.raises(BackendUnavailableError, match="sees no CUDA GPU: pass device='cpu'"):
            check_device("cuda")


def test_output_directories_are_checked_before_anything_is_written(tmp_path: Path) -> None:
    assert check_output_dir(tmp_path / "new" / "deeper", "--out") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists(), "checking creates nothing"
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match="--out: .*a_file is a file, not a directory"):
        check_output_dir(a_file, "--out")
    with pytest.raises(ConfigError, match="cannot make .*a_file/sub, since .*a_file is a file"):
        check_output_dir(a_file / "sub", "--out")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ConfigError, match=r"--out: cannot write into .*locked \(permission denied\)"):
            check_output_dir(locked / "out", "--out")


def test_commands_answer_bad_paths_and_devices_in_one_line(
    tiny_prior: Path, tiny_decoder: Path, tmp_path: Path, capsys
) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [
        (["make-tiny", str(a_file)], "make-tiny DIR: "),
        (
            ["export", "--prior", str(tiny_prior), "--decoder", str(tiny_decoder), "--out", str(a_file)],
            "--out",
        ),
        (["bench", "--out", str(a_file)], "--out: "),
    ]
    generate = ["generate", "a cat", "--prior", str(tiny_prior), "--decoder", str(tiny_decoder)]
    cases.append(([*generate, "--out", str(tmp_path / "x.png"), "--device", "gpu"], "'gpu' is not a device"))
    if not torch.cuda.is_available():
        cases.append(([*generate, "--out", str(tmp_path / "x.png"), "--device", "cuda"], "sees no CUDA GPU"))
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err, (argv, err)
        assert len(err.strip().splitlines()) == 1, err
    assert a_file.read_text() == "x" and not (tmp_path / "x.png").exists()


def test_an_option_the_backend_does_not_use_is_not_silently_dropped(tmp_path: Path) -> None:
    components = random_components(TINY, stages=("text_encoder", "stage_c", "stage_b", "stage_a"))
    with pytest.warns(
        UserWarning, match="onnx_dir is used by the onnxruntime and tensorrt backends only"
    ) as seen:
        CascadePipeline.from_components(components, backend="torch", onnx_dir=tmp_path)
    assert seen[0].filename == __file__, "the warning points at the caller's line"
    with pytest.warns(UserWarning, match="engine_dir is used by the tensorrt backend only; backend='torch'"):
        CascadePipeline.from_components(components, backend="torch", engine_dir=tmp_path)


def test_each_backend_takes_its_own_typed_options_and_nothing_else(tmp_path: Path) -> None:
    from cascade_trt.backends import backend_options, get_backend

    compiled = backend_options("torch", compile=True)
    assert type(compiled).__name__ == "TorchOptions" and compiled.compile is True
    ort = backend_options("onnxruntime", onnx_dir=str(tmp_path), providers=["CPUExecutionProvider"])
    assert ort.onnx_dir == tmp_path and ort.providers == ("CPUExecutionProvider",)
    with pytest.raises(
        ConfigError,
        match="'onnx_dirs' is not an option of the onnxruntime backend, which takes onnx_dir, providers",
    ):
        backend_options("onnxruntime", onnx_dirs=tmp_path)  # a typo is an error, never dropped
    with pytest.raises(
        ConfigError,
        match=r"runs the graphs `cascade-trt export` writes: pass onnx_dir=<directory> \(--onnx-dir\)",
    ):
        backend_options("onnxruntime")
    with pytest.raises(
        ConfigError,
        match=r"runs the engines `cascade-trt build` writes: pass engine_dir=<directory> \(--engine-dir\)",
    ):
        backend_options("tensorrt", onnx_dir=tmp_path)
    with pytest.raises(
        ConfigError, match="unknown backend 'tvm': choose one of torch, onnxruntime, tensorrt"
    ):
        backend_options("tvm")
    with pytest.raises(
        ConfigError, match="the onnxruntime backend takes OnnxRuntimeOptions, got TorchOptions"
    ):
        get_backend("onnxruntime").load_runners({}, options=compiled, device="cpu", dtypes={})


def test_the_cli_and_the_benchmarks_offer_the_registrys_backends(capsys) -> None:
    from cascade_trt.backends import BACKENDS
    from cascade_trt.benchmarks import BACKENDS as ROWS

    assert ROWS == (
        "diffusers",
        "torch",
        "torch-no-graphs",
        "torch-compile",
        "onnxruntime",
        "tensorrt",
    )  # each variant after its backend
    generate = ["generate", "a cat", "--prior", "P", "--decoder", "D", "--out", "x.png"]
    with pytest.raises(SystemExit):
        main([*generate, "--backend", "tvm"])
    error = capsys.readouterr().err.strip().splitlines()[-1]  # argparse quotes the choices on some versions
    assert "argument --backend: invalid choice: 'tvm' (choose from" in error
    assert all(name in error for name in BACKENDS)
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    assert "tensorrt, TensorRT engines built by" in capsys.readouterr().out.replace("\n", " ").replace(
        "  ", ""
    )


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["generate", "a cat", "--prior", "P", "--decoder", "D", "--out", "x.png", "--prior-steps", "-1"],
            "argument --prior-steps: must be a positive integer, got '-1'",
        ),
        (
            ["generate", "a cat", "--prior", "P", "--decoder", "D", "--out", "x.png", "--num-images", "0"],
            "argument --num-images: must be a positive integer",
        ),
        (["bench", "--out", "o", "--repeats", "0"], "argument --repeats: must be a positive integer"),
        (["bench", "--out", "o", "--warmup", "-1"], "argument --warmup: must be 0 or more"),
        (
            ["build", "--onnx", "o", "--out", "e", "--max-batch", "two"],
            "argument --max-batch: must be an integer",
        ),
    ],
)
def test_counts_are_refused_while_parsing_with_their_flag(argv: list[str], expected: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and expected in capsys.readouterr().err


def test_generate_prints_its_own_lines_only(tiny_prior: Path, tiny_decoder: Path, tmp_path: Path) -> None:
    """The libraries' advice (install accelerate, deprecations) is kept out unless -v asks for it."""
    import subprocess
    import sys

    out = tmp_path / "cat.png"
    argv = [
        "generate",
        "a cat",
        "--prior",
        str(tiny_prior),
        "--decoder",
        str(tiny_decoder),
        "--out",
        str(out),
    ]
    argv += ["--height", "128", "--width", "128", "--prior-steps", "1", "--decoder-steps", "1"]
    argv += ["--device", "cpu", "--no-progress"]
    command = [sys.executable, "-c", "import sys; from cascade_trt.cli import main; sys.exit(main())"]
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_VERBOSITY", "_ADVISORY_WARNINGS"))}
    quiet = subprocess.run([*command, *argv], capture_output=True, text=True, env=env, timeout=300)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.strip() == str(out) and quiet.stderr == ""
    verbose = subprocess.run([*command, "-v", *argv], capture_output=True, text=True, env=env, timeout=300)
    assert verbose.returncode == 0 and verbose.stderr != ""  # the same run, with the libraries' lines


def test_check_inputs_refuses_what_call_would_refuse_without_running_a_stage() -> None:
    """`check_inputs` is the validation a server runs before it queues a request: the same errors as
    `__call__`, and no stage runs (no buffers are allocated) whether the arguments pass or not."""
    pipe = CascadePipeline.from_components(random_components(TINY), backend="torch", precision="fp32")
    generators = [torch.Generator() for _ in range(4)]
    pipe.check_inputs(["a", "b"], height=256, width=384, num_images_per_prompt=2, generator=generators)
    bad = [
        ({"height": 200}, "height=200 is not a positive multiple of 128"),
        ({"prior_num_inference_steps": 0}, "prior_num_inference_steps must be a positive integer"),
        ({"decoder_guidance_scale": float("nan")}, "decoder_guidance_scale must be a finite number"),
        ({"num_images_per_prompt": 2, "generator": generators[:3]}, "got 3 generators for 4 images"),
        ({"negative_prompt": ["x"]}, "negative_prompt has 1 entries but prompt has 2"),
        ({"output_type": "jpeg"}, "output_type='jpeg': choose one of pil, np, pt, latent"),
    ]
    for kwargs, message in bad:
        with pytest.raises((ConfigError, ShapeError), match=message):
            pipe.check_inputs(["a", "b"], **{"height": 256, "width": 256, **kwargs})
    with pytest.raises(ConfigError, match="prompt must be a string or a non-empty list of strings"):
        pipe.check_inputs(7)
    assert not any(allocated(half) for half in (pipe.prior_pipe, pipe.decoder_pipe)), "checking ran a stage"
