"""Build step that makes a wheel self-contained: the checkout's committed models and Triton Python backends
become package data under ``nercc/_shipped/`` (see nercc.paths). Everything else is in pyproject.toml."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
#: ONNX files above this size are made at setup by `nercc export` (ImageNet models: 18-346 MB), not shipped.
SHIP_ONNX_MAX_BYTES = 8 * 2**20


def shipped_files():
    """(source, path under nercc/_shipped) of every file the wheel carries in place of the checkout."""
    for model_py in sorted((ROOT / "python_backends").glob("*/model.py")):
        yield model_py, model_py.relative_to(ROOT)
    # the committed measurements the simulator reads (nercc.paths.COMMITTED_RESULTS): calibration, accuracy
    results = ROOT / "bench" / "results"
    for path in [*sorted(results.glob("accuracy_*.json")), results / "scale" / "calibration.json",
                 *sorted((results / "scale" / "accuracy").glob("accuracy_*.json"))]:
        if path.is_file():
            yield path, path.relative_to(ROOT)
    for meta in sorted((ROOT / "model_repository").glob("*/nercc.json")):
        folder = meta.parent
        for name in ("nercc.json", "tuning.json", "1/model.onnx"):
            path = folder / name
            if path.is_file() and (path.suffix != ".onnx" or path.stat().st_size <= SHIP_ONNX_MAX_BYTES):
                yield path, path.relative_to(ROOT)


class BuildWithShippedData(build_py):
    def run(self):
        super().run()
        if self.editable_mode:  # an editable install reads the checkout itself
            return
        target = Path(self.build_lib) / "nercc" / "_shipped"
        for source, relative in shipped_files():
            dest = target / relative
            dest.parent.mkdir(parents=True, exist_ok=True)
            self.copy_file(str(source), str(dest), preserve_mode=False)


setup(cmdclass={"build_py": BuildWithShippedData})
