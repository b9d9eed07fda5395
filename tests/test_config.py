"""Configuration: version policies, YAML files, --model, --model-repository, models.config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tfmux.config import (
    ConfigError,
    ModelConfig,
    ModelSources,
    VersionPolicy,
    build_config,
    load_tfs_config,
    load_yaml_config,
    model_from_pair,
    models_from_repository,
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# -- VersionPolicy.parse -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, VersionPolicy()),
        ("latest", VersionPolicy(kind="latest", num_versions=1)),
        ("all", VersionPolicy(kind="all")),
        ({"all": {}}, VersionPolicy(kind="all")),
        ({"all": None}, VersionPolicy(kind="all")),
        ({"latest": 3}, VersionPolicy(kind="latest", num_versions=3)),
        ({"latest": "2"}, VersionPolicy(kind="latest", num_versions=2)),
        ({"latest": {}}, VersionPolicy(kind="latest", num_versions=1)),
        ({"latest": {"num_versions": 4}}, VersionPolicy(kind="latest", num_versions=4)),
        ({"specific": [3, 1, 3]}, VersionPolicy(kind="specific", versions=(1, 3))),
        ({"specific": {"versions": [2]}}, VersionPolicy(kind="specific", versions=(2,))),
        (VersionPolicy(kind="all"), VersionPolicy(kind="all")),
    ],
)
def test_version_policy_parses(value: Any, expected: VersionPolicy) -> None:
    assert VersionPolicy.parse(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("newest", "version_policy must be"),
        (3, "version_policy must be"),
        ([], "version_policy must be"),
        ({}, "version_policy must be"),
        ({"bogus": 1}, "version_policy must be"),
        ({"latest": 1, "all": {}}, "version_policy must be"),
        ({"latest": 0}, "at least 1 version"),
        ({"latest": -2}, "at least 1 version"),
        ({"latest": {"num_versions": 0}}, "at least 1 version"),
        ({"latest": None}, "latest needs a number of versions"),
        ({"latest": "many"}, "latest needs a number of versions"),
        ({"latest": [1]}, "latest needs a number of versions"),
        ({"specific": []}, "at least one version"),
        ({"specific": {"versions": []}}, "at least one version"),
        ({"specific": None}, "specific needs a list of versions"),
        ({"specific": 3}, "specific needs a list of versions"),
        ({"specific": "12"}, "specific needs a list of versions"),
        ({"specific": ["one"]}, "specific needs a list of versions"),
    ],
)
def test_version_policy_rejects(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VersionPolicy.parse(value)


# -- YAML files --------------------------------------------------------------------------


def test_yaml_mapping_form(tmp_path: Path) -> None:
    path = write(
        tmp_path / "conf" / "tfmux.yaml",
        """
models:
  classifier:
    base_path: models/classifier
    version_policy: {latest: 2}
    load: lazy
    runtime: tf2
    labels: {stable: 1, canary: 2}
  regressor:
    base_path: /abs/regressor
  bare:
    base_path: bare
""",
    )
    server, models = load_yaml_config(path, "eager")
    assert server == {}
    assert [m.name for m in models] == ["classifier", "regressor", "bare"]
    classifier, regressor, _ = models
    assert classifier == ModelConfig(
        name="classifier",
        base_path=tmp_path / "conf" / "models" / "classifier",
        version_policy=VersionPolicy(kind="latest", num_versions=2),
        load="lazy",
        runtime="tf2",
        labels={"stable": 1, "canary": 2},
    )
    assert regressor.base_path == Path("/abs/regressor")
    assert (regressor.load, regressor.runtime) == ("eager", "auto")
    assert regressor.version_policy == VersionPolicy()


def test_yaml_list_form_with_server_section(tmp_path: Path) -> None:
    path = write(
        tmp_path / "tfmux.yaml",
        """
server:
  http_port: 9000
  inference_threads: 8
models:
  - name: a
    base_path: ./a
    version_policy: all
  - name: b
    base_path: b
    version_policy: {specific: [1, 3]}
""",
    )
    server, models = load_yaml_config(path, "lazy")
    assert server == {"http_port": 9000, "inference_threads": 8}
    assert [(m.name, m.base_path, m.load) for m in models] == [
        ("a", tmp_path / "a", "lazy"),
        ("b", tmp_path / "b", "lazy"),
    ]
    assert models[0].version_policy == VersionPolicy(kind="all")
    assert models[1].version_policy == VersionPolicy(kind="specific", versions=(1, 3))


def test_yaml_relative_base_path_is_resolved_against_the_file_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "etc" / "tfmux.yaml", "models:\n  m: {base_path: ../models/m}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    _, (model,) = load_yaml_config(path, "eager")
    assert model.base_path == tmp_path / "models" / "m"
    assert model.base_path.is_absolute()


def test_empty_yaml_file_has_no_models(tmp_path: Path) -> None:
    assert load_yaml_config(write(tmp_path / "empty.yaml", ""), "eager") == ({}, [])


@pytest.mark.parametrize(
    ("text", "messages"),
    [
        ("servers: {}\nmodels: {}\n", ["unknown top-level keys ['servers']"]),
        ("models:\n  m: {base_path: m, colour: red}\n", ["model 'm'", "colour"]),
        ("models:\n  - {name: m, base_path: m, lod: lazy}\n", ["model 'm'", "lod"]),
        ("models:\n  bad name: {base_path: m}\n", ["model name 'bad name' must match"]),
        ("models:\n  -dash: {base_path: m}\n", ["model name '-dash' must match"]),
        ("models:\n  m: {base_path: m, labels: {bad-label: 1}}\n", ["label 'bad-label'"]),
        ("models:\n  m: {base_path: m, load: sometimes}\n", ["model 'm'", "load"]),
        ("models:\n  m: {base_path: m, version_policy: {latest: 0}}\n", ["version_policy"]),
        ("models:\n  m: {base_path: m, version_policy: {latest: }}\n", ["version_policy"]),
        ("models:\n  m: {}\n", ["model 'm'", "base_path: Field required"]),
        ("models:\n  m: /some/path\n", ["model 'm' must be a mapping"]),
        ("models:\n  - /some/path\n", ["each model must be a mapping"]),
        ("models: 3\n", ["models must be a mapping or a list"]),
        ("server: 3\n", ["server must be a mapping"]),
        ("- a\n- b\n", ["top level must be a mapping"]),
        ("models: [\n", ["cannot read config"]),
    ],
)
def test_bad_yaml_is_a_config_error(tmp_path: Path, text: str, messages: list[str]) -> None:
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_yaml_config(path, "eager")
    assert str(path) in str(info.value)
    for message in messages:
        assert message in str(info.value)


def test_missing_yaml_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_yaml_config(tmp_path / "nope.yaml", "eager")


# -- --model NAME=PATH -------------------------------------------------------------------


def test_model_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    model = model_from_pair("m.v2_x=models/m", "lazy")
    assert (model.name, model.base_path, model.load) == ("m.v2_x", tmp_path / "models/m", "lazy")
    assert model_from_pair("m=/a=b", "eager").base_path == Path("/a=b")


@pytest.mark.parametrize("pair", ["m", "m=", "=/path", ""])
def test_model_pair_needs_name_and_path(pair: str) -> None:
    with pytest.raises(ConfigError, match="--model expects NAME=PATH"):
        model_from_pair(pair, "eager")


def test_model_pair_with_invalid_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--model: name: .*'my model' must match"):
        model_from_pair(f"my model={tmp_path}", "eager")


# -- --model-repository ------------------------------------------------------------------


def test_repository_serves_every_subfolder(tmp_path: Path) -> None:
    for name in ("b", "a", ".hidden"):
        (tmp_path / "repo" / name / "1").mkdir(parents=True)
    (tmp_path / "repo" / "README.md").touch()
    models = models_from_repository(tmp_path / "repo", "lazy")
    assert [(m.name, m.base_path, m.load) for m in models] == [
        ("a", tmp_path / "repo" / "a", "lazy"),
        ("b", tmp_path / "repo" / "b", "lazy"),
    ]


def test_repository_must_be_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a directory"):
        models_from_repository(tmp_path / "missing", "eager")


def test_repository_with_an_invalid_folder_name(tmp_path: Path) -> None:
    (tmp_path / "my model").mkdir()
    with pytest.raises(ConfigError, match="'my model' must match"):
        models_from_repository(tmp_path, "eager")


# -- TF Serving models.config ------------------------------------------------------------

TFS_CONFIG = """
model_config_list {
  config {
    name: "newest"
    base_path: "/models/newest"
    model_platform: "tensorflow"
  }
  config {
    name: "two"
    base_path: "relative/two"
    model_version_policy { latest { num_versions: 2 } }
  }
  config {
    name: "every"
    base_path: "/models/every"
    model_version_policy { all {} }
  }
  config {
    name: "pinned"
    base_path: "/models/pinned"
    model_version_policy { specific { versions: 3 versions: 1 } }
    version_labels { key: "stable" value: 1 }
    version_labels { key: "canary" value: 3 }
  }
}
"""


def test_tfs_models_config(tmp_path: Path) -> None:
    path = write(tmp_path / "models.config", TFS_CONFIG)
    models = {m.name: m for m in load_tfs_config(path, "lazy")}
    assert list(models) == ["newest", "two", "every", "pinned"]
    assert models["newest"].version_policy == VersionPolicy()
    assert models["newest"].base_path == Path("/models/newest")
    assert models["two"].version_policy == VersionPolicy(kind="latest", num_versions=2)
    assert models["two"].base_path == tmp_path / "relative" / "two"
    assert models["every"].version_policy == VersionPolicy(kind="all")
    assert models["pinned"].version_policy == VersionPolicy(kind="specific", versions=(1, 3))
    assert models["pinned"].labels == {"stable": 1, "canary": 3}
    assert {m.load for m in models.values()} == {"lazy"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model_config_list { config { name: ", "cannot read TF Serving config"),
        (
            'model_config_list { config { name: "m" base_path: "/m" model_platform: "onnx" } }',
            "platform 'onnx' unsupported",
        ),
    ],
)
def test_bad_tfs_models_config(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_tfs_config(write(tmp_path / "models.config", text), "eager")


# -- build_config: merging sources -------------------------------------------------------


def test_build_config_merges_every_source(tmp_path: Path) -> None:
    config_file = write(tmp_path / "tfmux.yaml", "models:\n  from_yaml: {base_path: y}\n")
    tfs_file = write(
        tmp_path / "models.config",
        'model_config_list { config { name: "from_tfs" base_path: "/t" } }',
    )
    (tmp_path / "repo" / "from_repo").mkdir(parents=True)
    sources = ModelSources(
        repositories=[tmp_path / "repo"],
        models=[f"from_pair={tmp_path}"],
        config_files=[config_file],
        tfs_config_files=[tfs_file],
        load="lazy",
    )
    assert not sources.empty()
    config = build_config(sources, {})
    assert [m.name for m in config.models] == ["from_yaml", "from_tfs", "from_repo", "from_pair"]
    assert {m.load for m in config.models} == {"lazy"}


def test_build_config_without_sources_has_defaults() -> None:
    sources = ModelSources()
    assert sources.empty()
    config = build_config(sources, {})
    assert config.models == []
    assert (config.host, config.http_port, config.grpc_port) == ("127.0.0.1", 8501, 8500)


def test_duplicate_model_names_across_sources_are_refused(tmp_path: Path) -> None:
    config_file = write(tmp_path / "tfmux.yaml", "models:\n  m: {base_path: m}\n")
    sources = ModelSources(models=[f"m={tmp_path}"], config_files=[config_file])
    with pytest.raises(ConfigError, match="model 'm' is configured more than once"):
        build_config(sources, {})


def test_command_line_overrides_win_over_the_file(tmp_path: Path) -> None:
    config_file = write(
        tmp_path / "tfmux.yaml",
        "server:\n  http_port: 9000\n  grpc_port: 9001\n  log_level: debug\n",
    )
    sources = ModelSources(config_files=[config_file])
    config = build_config(sources, {"http_port": 7000, "grpc_port": None, "host": "0.0.0.0"})
    assert config.http_port == 7000  # the command line wins
    assert config.grpc_port == 9001  # None means "not given": the file's value stays
    assert config.log_level == "debug"
    assert config.host == "0.0.0.0"


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ("bogus: 1", "bogus"),
        ("http_port: 70000", "http_port"),
        ("inference_threads: 0", "inference_threads"),
    ],
)
def test_bad_server_settings_are_a_config_error(tmp_path: Path, server: str, message: str) -> None:
    config_file = write(tmp_path / "tfmux.yaml", f"server:\n  {server}\n")
    with pytest.raises(ConfigError, match=f"server settings: {message}"):
        build_config(ModelSources(config_files=[config_file]), {})
