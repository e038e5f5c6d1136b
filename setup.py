from setuptools import find_packages, setup

# What only some commands need, so that a user of the models alone is not made to install it.
# `bash scripts/setup_env.sh` installs ".[all,test]".
EXTRAS = {
    # nemo_tl.data.synth_corpus and nemo_tl.demo: espeak-ng speech (or Debian's espeak-ng), CLDR texts
    "synth": ["babel>=2.12", "espeakng-loader>=0.2"],
    # PNGs: nemo_tl.transfer.introspect's histograms, the (τ, s_th) sweep, learning curves
    "plots": ["matplotlib>=3.7"],
}
EXTRAS["all"] = sorted({req for reqs in EXTRAS.values() for req in reqs})
EXTRAS["test"] = ["pytest>=8", "ruff>=0.5", "setuptools>=70.1"]  # setuptools: tests/test_packaging.py builds the wheel offline

setup(
    name="nemo_tl",
    version="0.1.0",
    description="Transfer learning, knowledge distillation and multilingual multi-softmax RNN-T for NVIDIA NeMo ASR",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    # conf/ (the YAML configs of examples/ and the demo) ships inside the package as nemo_tl/conf/:
    # one copy in the repository, found by nemo_tl.utils.configs.config_file in both layouts.
    packages=[*find_packages(include=["nemo_tl", "nemo_tl.*"]), "nemo_tl.conf"],
    package_dir={"nemo_tl.conf": "conf"},
    package_data={"nemo_tl": ["assets/*.nemo"], "nemo_tl.conf": ["*.yaml"]},
    python_requires=">=3.10",
    install_requires=[
        "nemo_toolkit[asr]>=3.0.0,<3.1",
        "torch>=2.6",
        "lightning>2.2.1,<=2.4.0",  # the range nemo_toolkit 3.0 pins
        "omegaconf>=2.3,<2.4",
        "hydra-core>1.3,<=1.3.2",
        "numba>=0.59",  # NeMo's warprnnt_numba RNN-T loss (NeMo itself requires numba on macOS only)
        "soundfile>=0.12",
        "inflect>=7.0",  # NeMo's 'en' text normalizer spells numbers with it (without it, it drops the utterance)
    ],
    extras_require=EXTRAS,
)
