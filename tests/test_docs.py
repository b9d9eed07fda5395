"""The configuration examples in docs/configuration.md are read by the real parsers."""

from __future__ import annotations

import re
from pathlib import Path

from tfmux.config import ServerConfig, load_tfs_config, load_yaml_config

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), re.S)


def test_yaml_example_parses(tmp_path: Path) -> None:
    (example,) = blocks("yaml")
    path = tmp_path / "tfmux.yaml"
    path.write_text(example)
    server, models = load_yaml_config(path, "eager")
    assert server["http_port"] == 8501
    by_name = {m.name: m for m in models}
    assert by_name["fraud"].version_policy.num_versions == 2
    assert by_name["fraud"].base_path == tmp_path / "models" / "fraud"
    assert by_name["churn"].load == "lazy" and by_name["churn"].labels == {"stable": 7}
    assert by_name["legacy"].version_policy.versions == (1, 3)
    assert by_name["legacy"].runtime == "tf1"


def test_tf_serving_models_config_example_parses(tmp_path: Path) -> None:
    (example,) = blocks("text")
    path = tmp_path / "models.config"
    path.write_text(example)
    fraud, churn = load_tfs_config(path, "eager")
    assert fraud.name == "fraud" and fraud.version_policy.num_versions == 2
    assert fraud.labels == {"stable": 1}
    assert churn.version_policy.versions == (7, 8)


def test_batching_example_parses(tmp_path: Path) -> None:
    text = (DOC.parent / "batching.md").read_text()
    (example,) = re.findall(r"```yaml\n(.*?)```", text, re.S)
    path = tmp_path / "tfmux.yaml"
    path.write_text(example)
    server, models = load_yaml_config(path, "eager")
    config = ServerConfig(**server, models=models)
    assert config.request_timeout_ms == 2000
    assert config.max_run_time_ms == 10000
    assert config.batching.max_batch_size == 32
    ranker, tiny = config.models
    assert ranker.batching is not None and ranker.batching.allowed_batch_sizes == (8, 16, 32, 64)
    assert ranker.batching.batch_timeout_micros == 500
    assert tiny.batching is not None and not tiny.batching.enabled


def python_examples(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOC.parent / page).read_text(), re.S)


def test_grpc_examples_run(e2e_server) -> None:
    """Each Python example of docs/grpc.md, pointed at the test server, prints an answer."""
    import contextlib
    import io

    examples = python_examples("grpc.md")
    assert len(examples) == 2
    for example in examples:
        code = example.replace("localhost:8500", f"127.0.0.1:{e2e_server.server.grpc_port}")
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, "docs/grpc.md", "exec"), {})
        version, *values = out.getvalue().split()
        assert version == "1" and values, out.getvalue()
