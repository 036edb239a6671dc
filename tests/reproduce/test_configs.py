"""The tables find their configs in the package (importlib.resources), not relative to the working folder.

configs/ ships as research/configs (pyproject.toml's package data; a link in the source tree), so
``python -m research reproduce`` works from any folder and from an installed wheel.
"""

import os
import shutil
import subprocess
import sys
import zipfile
from importlib.util import find_spec
from pathlib import Path

import pytest
import yaml

from research.reproduce import (
    batchnorm,
    catastrophic_overfitting,
    goodfellow,
    madry,
    mae_mask_ratio,
    runs,
    seq2seq,
    vit_vs_resnet,
    wong,
)

ROOT = Path(__file__).resolve().parents[2]
TABLE_CONFIGS = sorted({
    batchnorm.CONFIG, madry.NATURAL, madry.ROBUST, goodfellow.ADVERSARIAL, wong.FAST, wong.PGD7,
    catastrophic_overfitting.LARGE, catastrophic_overfitting.LARGE_UNGUARDED, vit_vs_resnet.RESNET,
    vit_vs_resnet.VIT, mae_mask_ratio.PRETRAIN, mae_mask_ratio.PROBE, *seq2seq.CONFIGS.values(),
})


@pytest.mark.parametrize("config", TABLE_CONFIGS)
def test_a_tables_config_resolves_from_another_working_folder(config, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    with runs.config_file(config) as path:
        assert path.is_file() and path.read_bytes() == (ROOT / "configs" / config).read_bytes()
        assert "model" in yaml.safe_load(path.read_text())
    assert runs.config_key(config) != f"{config}@da39a3ee"  # the hash of the file's text, not of nothing


def test_an_unknown_config_says_where_it_looked():
    with pytest.raises(FileNotFoundError, match="no config 'reproduce/nope.yaml' in .*configs"), \
            runs.config_file("reproduce/nope.yaml"):
        pass


@pytest.mark.skipif(find_spec("setuptools") is None, reason="building a wheel needs setuptools")
def test_a_built_wheel_ships_the_configs_and_finds_them(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "configs", source / "configs")
    # symlinks=True: research/configs stays the link to ../configs that the wheel's build follows
    shutil.copytree(ROOT / "research", source / "research", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-q", "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True,
                           timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    [wheel] = (tmp_path / "dist").glob("research-*.whl")
    installed = tmp_path / "installed"
    zipfile.ZipFile(wheel).extractall(installed)
    assert {f"research/configs/{config}" for config in TABLE_CONFIGS} <= set(zipfile.ZipFile(wheel).namelist())

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = ("import research; from research.reproduce import runs, wong; print(research.__file__); "
             "print(runs.config_key(wong.FAST))")
    env = {**os.environ, "PYTHONPATH": str(installed), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    module, key = done.stdout.split()
    assert Path(module).is_relative_to(installed)  # the wheel's package, not the checkout's
    assert key == runs.config_key(wong.FAST)
