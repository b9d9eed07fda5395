"""TF Serving's command line, parser level: syntax, the mapping onto ServerConfig, the config
files it names, refused flags and startup notes. No server runs here (see
test_tfs_flags_e2e.py)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tfmux.tfs_flags import FLAGS, FlagError, parse_flags
from tfmux.tfs_main import build, main

ONE_MODEL = ["--model_name=m", "--model_base_path=/srv/m"]
# TF Serving's own testdata/batching_config.txt, verbatim.
TFS_BATCHING = """max_batch_size { value: 128 }
batch_timeout_micros { value: 0 }
max_enqueued_batches { value: 1000000 }
num_batch_threads { value: 8 }
"""


def config_of(*args: str, environ: dict[str, str] | None = None):
    return build([*ONE_MODEL, *args], environ or {}).config


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# -- syntax --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--port=9000"], {"port": 9000}),
        (["--port", "9000"], {"port": 9000}),
        (["--enable_batching"], {"enable_batching": True}),
        (["--enable_batching=true"], {"enable_batching": True}),
        (["--enable_batching=false"], {"enable_batching": False}),
        (["--enable_batching", "false"], {"enable_batching": False}),
        (["--enable_batching", "--port=1"], {"enable_batching": True, "port": 1}),
        (["--enable_batching=0", "--enable_batching=1"], {"enable_batching": True}),
        (["--model_name", "fraud"], {"model_name": "fraud"}),
        (["--per_process_gpu_memory_fraction=0.5"], {"per_process_gpu_memory_fraction": 0.5}),
    ],
)
def test_tf_serving_flag_syntax(args: list[str], expected: dict[str, object]) -> None:
    assert parse_flags(args) == expected


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--rest_api_prot=8501"], "unknown flag --rest_api_prot (did you mean --rest_api_port?)"),
        (["8501"], "unknown argument: 8501"),
        (["-port=1"], "unknown argument: -port=1"),
        (["--port=eighty"], "--port=eighty: expected an integer"),
        (["--enable_batching=yes"], "--enable_batching=yes: expected true or false"),
        (["--model_name"], "--model_name needs a value"),
    ],
)
def test_bad_syntax_is_refused_naming_the_flag(args: list[str], needle: str) -> None:
    with pytest.raises(FlagError) as info:
        parse_flags(args)
    assert needle in str(info.value)


REFUSED = sorted(name for name, flag in FLAGS.items() if flag.refused)


@pytest.mark.parametrize("name", REFUSED)
def test_each_unimplemented_flag_is_refused_with_tfmux_equivalent(name: str) -> None:
    flag = FLAGS[name]
    value = {bool: "true", int: "4", str: "something"}[flag.kind]
    with pytest.raises(FlagError) as info:
        parse_flags([f"--{name}={value}"])
    message = str(info.value)
    assert f"--{name}={value} is not supported by tfmux" in message
    assert flag.refused in message
    if flag.accepts:  # the value that matches tfmux's behaviour is accepted
        accepted = str(flag.accepts[0]).lower()
        assert parse_flags([f"--{name}={accepted}"]) == {name: flag.accepts[0]}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--enable_model_warmup=false"], "warmup_requests is always replayed"),
        (["--max_num_load_retries=5"], "a failed load is not retried"),
        (["--num_request_iterations_for_warmup=3"], "replays each record once"),
        (["--saved_model_tags=serve,gpu"], "'serve' meta graph only"),
        (["--file_system_poll_wait_seconds=-1"], "negative values"),
        (["--port=0"], "At least one of --port or --grpc_socket_path must be set"),
        (["--port=9000", "--rest_api_port=9000"], "cannot be the same as --port"),
        (["--grpc_channel_arguments=grpc.max_connection_age_ms=2000"], "not supported by tfmux"),
        (["--grpc_channel_arguments=grpc.max_receive_message_length"], "is not KEY=VALUE"),
        (
            [
                "--grpc_channel_arguments=grpc.max_receive_message_length=10,"
                "grpc.max_send_message_length=20"
            ],
            "one gRPC message limit for both directions",
        ),
        (["--tfmux_load=sometimes"], "expected eager or lazy"),
        (["--tfmux_memory_budget=lots"], "cannot read size"),
        (["--per_process_gpu_memory_fraction=2"], "between 0 and 1"),
    ],
)
def test_values_tfmux_cannot_honour_are_refused(args: list[str], needle: str) -> None:
    with pytest.raises(FlagError) as info:
        build([*ONE_MODEL, *args], {})
    assert needle in str(info.value)


def test_the_command_exits_non_zero_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--model_base_path=/srv/m", "--use_alts_credentials"])
    assert info.value.code == 1
    assert "--use_alts_credentials=true is not supported by tfmux" in capsys.readouterr().err


def test_help_lists_tf_serving_flags_then_tfmux_extras(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--help"])
    text = capsys.readouterr().out
    assert text.index("--rest_api_port") < text.index("tfmux's own flags:")
    assert text.index("tfmux's own flags:") < text.index("--tfmux_memory_budget")
    assert "--xla_cpu_compilation_enabled=false" in text


# -- the mapping onto ServerConfig -----------------------------------------------------------


def test_defaults_are_tf_serving_defaults() -> None:
    config = config_of()
    assert (config.grpc_port, config.grpc_tcp_enabled) == (8500, True)
    assert config.http_enabled is False  # --rest_api_port defaults to 0: no REST API
    assert config.host == "0.0.0.0"
    assert config.batching.enabled is False  # batching only with --enable_batching
    assert config.poll_interval_seconds == 1.0  # --file_system_poll_wait_seconds=1
    assert config.max_grpc_message_bytes == 2**31 - 1  # TF Serving's gRPC message limit
    ((model),) = config.models
    assert (model.name, model.base_path, model.load) == ("m", Path("/srv/m"), "eager")


def test_model_name_defaults_to_default() -> None:
    ((model),) = build(["--model_base_path=/srv/m"], {}).config.models
    assert model.name == "default"


def test_ports_threads_and_extras_map_to_tfmux_settings() -> None:
    config = config_of(
        "--port=9000",
        "--rest_api_port=9001",
        "--rest_api_timeout_in_ms=2500",
        "--tensorflow_intra_op_parallelism=2",
        "--tensorflow_inter_op_parallelism=3",
        "--num_load_threads=4",
        "--file_system_poll_wait_seconds=0",
        "--tfmux_host=127.0.0.1",
        "--tfmux_memory_budget=1GiB",
        "--tfmux_load=lazy",
        "--tfmux_admin_token=s3cret",
        "--tfmux_inference_threads=6",
    )
    assert (config.grpc_port, config.http_port, config.http_enabled) == (9000, 9001, True)
    assert config.request_timeout_ms == 2500
    assert (config.tf_intra_op_threads, config.tf_inter_op_threads) == (2, 3)
    assert config.max_concurrent_loads == 4
    assert config.poll_interval_seconds == 0
    assert config.host == "127.0.0.1"
    assert config.memory_budget_bytes == 2**30
    assert config.models[0].load == "lazy"
    assert config.admin_token == "s3cret"
    assert config.inference_threads == 6


def test_session_parallelism_sets_both_pools_unless_given() -> None:
    config = config_of("--tensorflow_session_parallelism=5", "--tensorflow_intra_op_parallelism=2")
    assert (config.tf_intra_op_threads, config.tf_inter_op_threads) == (2, 5)


def test_grpc_on_a_unix_socket_only(tmp_path: Path) -> None:
    config = config_of("--port=0", f"--grpc_socket_path={tmp_path / 'g.sock'}")
    assert config.grpc_tcp_enabled is False
    assert config.grpc_socket_path == tmp_path / "g.sock"


def test_message_size_channel_arguments_set_the_grpc_limit() -> None:
    config = config_of(
        "--grpc_channel_arguments=grpc.max_receive_message_length=1048576,"
        "grpc.max_send_message_length=1048576"
    )
    assert config.max_grpc_message_bytes == 1048576


def test_admin_token_from_the_environment() -> None:
    assert config_of(environ={"TFMUX_ADMIN_TOKEN": "t"}).admin_token == "t"


# -- container conventions -----------------------------------------------------------------


def test_no_model_flags_reads_model_name_and_base_path_as_the_image() -> None:
    invocation = build([], {"MODEL_NAME": "fraud", "MODEL_BASE_PATH": "/srv/models"})
    ((model),) = invocation.config.models
    assert (model.name, model.base_path) == ("fraud", Path("/srv/models/fraud"))
    config = invocation.config  # the image's entrypoint ports
    assert (config.grpc_port, config.http_port, config.http_enabled) == (8500, 8501, True)
    assert any("$MODEL_NAME" in note for note in invocation.notes)


def test_image_defaults_without_environment() -> None:
    ((model),) = build(["--port=1", "--rest_api_port=2"], {}).config.models
    assert (model.name, model.base_path) == ("model", Path("/models/model"))


def test_model_name_without_base_path_is_refused() -> None:
    with pytest.raises(FlagError, match="--model_base_path is required"):
        build(["--model_name=m"], {})


# -- models.config ---------------------------------------------------------------------------

MODELS_CONFIG = """model_config_list {
  config {
    name: "half_plus_two"
    base_path: "/srv/half_plus_two"
    model_platform: "tensorflow"
    model_version_policy { specific { versions: 1 versions: 2 } }
    version_labels { key: "stable" value: 1 }
    version_labels { key: "canary" value: 2 }
  }
  config { name: "half_plus_three" base_path: "/srv/half_plus_three" }
}
"""


def test_model_config_file_with_labels_and_polling(tmp_path: Path) -> None:
    path = write(tmp_path, "models.config", MODELS_CONFIG)
    invocation = build(
        [f"--model_config_file={path}", "--model_config_file_poll_wait_seconds=30"], {}
    )
    config = invocation.config
    assert [m.name for m in config.models] == ["half_plus_two", "half_plus_three"]
    assert config.models[0].labels == {"stable": 1, "canary": 2}
    assert config.models[0].version_policy.versions == (1, 2)
    assert (config.model_config_file, config.model_config_poll_seconds) == (Path(path), 30.0)


def test_model_flags_with_a_config_file_are_ignored_and_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "models.config", MODELS_CONFIG)
    notes = build([f"--model_config_file={path}", "--model_name=x"], {}).notes
    assert "--model_name is ignored: --model_config_file names the models" in notes


def test_a_bad_model_config_file_stops_with_tf_servings_error(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.config", "improperly formatted file")
    with pytest.raises(FlagError) as info:
        build([f"--model_config_file={path}"], {})
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in str(info.value)
    with pytest.raises(FlagError, match="cannot read --model_config_file"):
        build([f"--model_config_file={tmp_path / 'missing.config'}"], {})


# -- batching parameters -------------------------------------------------------------------


def test_tf_servings_batching_parameters_map_to_batching_config(tmp_path: Path) -> None:
    path = write(tmp_path, "batching.config", TFS_BATCHING)
    batching = config_of("--enable_batching", f"--batching_parameters_file={path}").batching
    assert batching.enabled is True
    assert (batching.max_batch_size, batching.batch_timeout_micros) == (128, 0)
    assert batching.max_queue_size == 1000000 * 128  # batches x rows: requests of >= 1 row
    assert batching.max_inflight_batches == 8


def test_allowed_batch_sizes_must_end_with_max_batch_size(tmp_path: Path) -> None:
    good = write(tmp_path, "good", "max_batch_size { value: 8 } allowed_batch_sizes: [2, 4, 8]")
    batching = config_of("--enable_batching", f"--batching_parameters_file={good}").batching
    assert batching.allowed_batch_sizes == (2, 4, 8)
    bad = write(tmp_path, "bad", "max_batch_size { value: 8 } allowed_batch_sizes: [2, 4]")
    with pytest.raises(FlagError, match="last entry was 4; expected 8"):
        config_of("--enable_batching", f"--batching_parameters_file={bad}")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("pad_variable_length_inputs: true", "pad_variable_length_inputs is not supported"),
        ("enable_large_batch_splitting { value: true }", "enable_large_batch_splitting"),
        ("max_batch_sise { value: 8 }", "Error parsing text-format"),
    ],
)
def test_batching_parameters_tfmux_cannot_honour(tmp_path: Path, text: str, needle: str) -> None:
    path = write(tmp_path, "batching.config", text)
    with pytest.raises(FlagError, match=needle):
        config_of("--enable_batching", f"--batching_parameters_file={path}")


def test_batching_parameters_need_enable_batching(tmp_path: Path) -> None:
    path = write(tmp_path, "batching.config", TFS_BATCHING)
    with pytest.raises(FlagError, match="without --enable_batching"):
        config_of(f"--batching_parameters_file={path}")


# -- monitoring, TLS, notes ------------------------------------------------------------------


def test_monitoring_config_adds_the_prometheus_path(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "monitoring.config",
        'prometheus_config: {\n  enable: true,\n  path: "/my/metrics"\n}\n',
    )
    assert config_of(f"--monitoring_config_file={path}").metrics_path == "/my/metrics"
    off = write(tmp_path, "off.config", "prometheus_config { enable: false }")
    invocation = build([*ONE_MODEL, f"--monitoring_config_file={off}"], {})
    assert invocation.config.metrics_path is None
    assert any("serves /metrics anyway" in note for note in invocation.notes)


PEM = {"key": "-----BEGIN PRIVATE KEY-----\nk\n", "cert": "-----BEGIN CERTIFICATE-----\nc\n"}


@pytest.mark.parametrize("client_verify", [False, True])
def test_ssl_config_maps_to_private_pem_files(tmp_path: Path, client_verify: bool) -> None:
    from tfmux.tfs_files import tls_settings

    path = tmp_path / "ssl.config"
    path.write_text(
        f'server_key: "{PEM["key"].encode("unicode_escape").decode()}"\n'
        f'server_cert: "{PEM["cert"].encode("unicode_escape").decode()}"\n'
        f'custom_ca: "CA"\nclient_verify: {str(client_verify).lower()}\n'
    )
    private = tmp_path / "private"
    private.mkdir()
    settings = tls_settings(path, private)
    assert settings["tls_key_file"].read_text() == PEM["key"]
    assert settings["tls_cert_file"].read_text() == PEM["cert"]
    assert ("tls_client_ca_file" in settings) is client_verify  # CA checks client certificates
    if client_verify:
        assert settings["tls_client_ca_file"].read_text() == "CA"
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in settings.values())


def test_ssl_config_without_key_is_refused(tmp_path: Path) -> None:
    from tfmux.tfs_files import tls_settings

    path = write(tmp_path, "ssl.config", 'server_cert: "c"')
    with pytest.raises(FlagError, match="server_key and server_cert are both required"):
        tls_settings(Path(path), tmp_path)


def test_flags_without_effect_are_reported() -> None:
    notes = build(
        [*ONE_MODEL, "--rest_api_num_threads=8", "--grpc_max_threads=8", "--enable_profiler"],
        {},
    ).notes
    assert any(n.startswith("--rest_api_num_threads is accepted but has no effect") for n in notes)
    assert any(n.startswith("--grpc_max_threads is accepted but has no effect") for n in notes)
    assert any("no profiler service" in n for n in notes)


def test_gpu_memory_fraction_on_a_machine_without_gpu_is_reported() -> None:
    from tfmux.tfs_invocation import _has_gpu

    if _has_gpu():
        pytest.skip("this machine has a GPU; the test is about a CPU-only machine")
    notes = build([*ONE_MODEL, "--per_process_gpu_memory_fraction=0.5"], {}).notes
    assert "--per_process_gpu_memory_fraction=0.5 has no effect: this machine has no GPU" in notes


# -- docs/tf-serving-migration.md ----------------------------------------------------------

PAGE = Path(__file__).resolve().parent.parent / "docs" / "tf-serving-migration.md"


def test_every_documented_command_line_parses() -> None:
    import re
    import shlex

    lines = [
        line
        for block in re.findall(r"```sh\n(.*?)```", PAGE.read_text(), re.S)
        for line in block.splitlines()
        if "tensorflow_model_server" in line
    ]
    assert len(lines) >= 7
    for line in lines:
        words = shlex.split(line)
        args = words[words.index("tensorflow_model_server") + 1 :]
        if args and args != ["--help"]:
            assert parse_flags(args), line


def test_documented_config_files_parse() -> None:
    import re

    from tfmux.tfs_protos_text import parse_text

    batching, monitoring = re.findall(r"```text\n(.*?)```", PAGE.read_text(), re.S)
    assert parse_text("BatchingParameters", batching).max_batch_size.value == 128
    assert parse_text("MonitoringConfig", monitoring).prometheus_config.enable


def test_every_flag_is_in_the_migration_page() -> None:
    text = PAGE.read_text()
    missing = [name for name in FLAGS if f"--{name}`" not in text]
    assert not missing
