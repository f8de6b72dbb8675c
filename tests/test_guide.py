"""The Python blocks of docs/guide.md run as written, each in a fresh folder with its inputs.

Inputs a reader would have (a difference grid, SYNTHE output files, a catalogue) are made here;
the shipped demo emulator `checkpoints/phdl-demo.ckpt` is used as it is.
"""

from __future__ import annotations

import re

import h5py
import numpy as np
import pytest
from conftest import REPOSITORY, make_toy_grid

from phdl.grid import read_grid_info, write_grid

GUIDE = REPOSITORY / "docs" / "guide.md"
CHECKPOINT = REPOSITORY / "checkpoints" / "phdl-demo.ckpt"
BLOCKS = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)


def block(marker: str) -> str:
    found = [b for b in BLOCKS if marker in b]
    assert len(found) == 1, f"docs/guide.md: expected one python block with {marker!r}"
    return found[0]


def run(code: str, folder, monkeypatch) -> dict:
    monkeypatch.chdir(folder)
    namespace: dict = {"__name__": "guide"}
    exec(compile(code, str(GUIDE), "exec"), namespace)
    return namespace


def test_every_block_is_tested():
    markers = ("import_difference_grid(", "synthe_file", "Table.read(", "load_emulator(")
    assert len(BLOCKS) == len(markers)
    for marker in markers:
        block(marker)


def test_difference_grid_import(tmp_path, monkeypatch):
    wavelength, names, labels, flux, gradients = make_toy_grid(
        label_names=("teff", "logg", "fe_h", "mg_fe")
    )
    delta = {"teff": 50.0, "logg": 0.1, "fe_h": 0.05, "mg_fe": 0.05}
    steps = np.array([delta[n] for n in names], dtype=np.float32)
    write_grid(tmp_path / "my_differences.h5", wavelength, names, labels, flux, names,
               gradients * steps[None, :, None], resolution=1800.0)  # fmt: skip
    run(block("import_difference_grid("), tmp_path, monkeypatch)
    with h5py.File(tmp_path / "my_grid.h5", "r") as f:
        np.testing.assert_allclose(f["gradients"][...], gradients, rtol=1e-5, atol=1e-6)


def test_synthe_example(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    names = ["teff", "logg", "vmic", "fe_h", "mg_fe"]
    labels = np.column_stack([rng.uniform(4500, 6500, 3), rng.uniform(1, 5, 3), np.ones(3),
                              rng.uniform(-1, 0, 3), rng.uniform(-0.2, 0.2, 3)])  # fmt: skip
    (tmp_path / "synthe").mkdir()
    np.savetxt(tmp_path / "synthe" / "labels.txt", labels)
    nm = np.linspace(369.0, 911.0, 15000)  # SYNTHE-like: nm, air, finer than LAMOST

    def spectrum(row):  # a Mg-b-like line whose depth follows the labels
        depth = 0.3 + 0.1 * row[3] + 0.2 * row[4] + 1e-5 * (row[0] - 5000)
        return 1.0 - depth * np.exp(-0.5 * ((nm - 517.27) / 0.05) ** 2)

    steps = {"teff": 50.0, "logg": 0.1, "vmic": 0.1, "fe_h": 0.05, "mg_fe": 0.05}
    for star, row in enumerate(labels):
        np.savetxt(
            tmp_path / "synthe" / f"star{star:05d}.asc", np.column_stack([nm, spectrum(row)])
        )
        for j, name in enumerate(names):
            moved = row.copy()
            moved[j] += steps[name]
            np.savetxt(tmp_path / "synthe" / f"star{star:05d}_{name}.asc",
                       np.column_stack([nm, spectrum(moved)]))  # fmt: skip
    run(block("synthe_file"), tmp_path, monkeypatch)
    info = read_grid_info(tmp_path / "my_grid.h5")
    assert info.label_names == tuple(names) and info.n_spectra == 3
    with h5py.File(tmp_path / "my_grid.h5", "r") as f:
        flux, gradients = f["flux"][...], f["gradients"][...]
    line = np.argmin(flux[0])
    assert 5170 < info.wavelength[line] < 5177  # 517.27 nm in air is 5174.1 A in vacuum
    assert 0.5 < flux[0, line] < 0.95  # degraded to R = 1800: shallower than the 0.3-0.5 input
    mg = names.index("mg_fe")
    assert gradients[0, mg, line] < 0 and gradients[0, names.index("logg"), line] == pytest.approx(
        0
    )


@pytest.fixture(scope="module")
def shipped():
    if not CHECKPOINT.exists():
        pytest.fail(f"{CHECKPOINT} is missing: the repository ships a demo emulator there")
    return CHECKPOINT


def test_python_api_with_the_shipped_emulator(shipped, tmp_path, monkeypatch, capsys):
    (tmp_path / "checkpoints").symlink_to(shipped.parent)
    namespace = run(block("load_emulator("), tmp_path, monkeypatch)
    result = namespace["result"]
    assert bool(result["converged"][0]) or result["flag"][0] == 0
    assert np.isfinite(result["teff"][0]) and result["teff_err"][0] > 0
    assert "teff:" in capsys.readouterr().out


def test_documented_lamost_predict_and_catalogue_reading(shipped, tmp_path, monkeypatch):
    """The guide's `phdl predict` line on mock LAMOST files, then its catalogue-reading block."""
    import shlex

    from phdl.cli import main
    from phdl.data.mock import write_mock_lamost
    from phdl.emulator import load_emulator

    emulator = load_emulator(str(shipped))
    folder = tmp_path / "data" / "lamost" / "dr9"
    folder.mkdir(parents=True)
    scaled = np.random.default_rng(1).uniform(-0.3, 0.3, (3, len(emulator.label_names)))
    import torch

    flux = emulator.flux(emulator.unscale(torch.tensor(scaled, dtype=torch.float32))).numpy()
    for k in range(3):
        write_mock_lamost(folder / f"star{k}.fits.gz", emulator.wavelength, flux[k], snr=80,
                          rv_kms=20.0 * k, layout="dr9-table", seed=k)  # fmt: skip
    (tmp_path / "broken.fits").write_text("not a FITS file")
    (folder / "broken.fits").write_bytes((tmp_path / "broken.fits").read_bytes())
    bash = "\n".join(re.findall(r"```bash\n(.*?)```", GUIDE.read_text(), flags=re.S))
    line = next(line for line in bash.splitlines()
                if line.startswith("phdl predict --config configs/predict_lamost.yaml")
                and "/data/lamost/dr9" in line)  # fmt: skip
    words = shlex.split(line.replace("/data/lamost/dr9", str(folder)))
    words = [
        str(REPOSITORY / w) if w.startswith(("configs/", "checkpoints/")) else w for w in words
    ]
    monkeypatch.chdir(tmp_path)
    main(words[1:] + ["--data.init_args.num_workers", "0"])
    assert (tmp_path / "runs" / "dr9" / "catalogue_rejects.csv").exists()
    namespace = run(block("Table.read("), tmp_path, monkeypatch)
    catalogue = namespace["catalogue"]
    assert len(catalogue) == 4 and str(catalogue["teff"].unit) == "K"
    assert int(np.sum(catalogue["flag"] != 0)) >= 1  # the broken file
