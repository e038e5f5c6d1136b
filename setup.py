from setuptools import find_packages, setup

setup(
    name="nemo_tl",
    version="0.1.0",
    description="Transfer learning, knowledge distillation and multilingual multi-softmax RNN-T for NVIDIA NeMo ASR",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["nemo_tl", "nemo_tl.*"]),
    python_requires=">=3.10",
    install_requires=[
        "nemo_toolkit[asr]>=3.0.0,<3.1",
        "torch>=2.6",
        "lightning>2.2.1,<=2.4.0",  # the range nemo_toolkit 3.0 pins
        "omegaconf>=2.3,<2.4",
        "hydra-core>1.3,<=1.3.2",
        "numba>=0.59",
        "jiwer>=3.0",
        "soundfile>=0.12",
        "matplotlib>=3.7",
        "babel>=2.12",
        "espeakng-loader>=0.2",
        "inflect>=7.0",  # NeMo's 'en' text normalizer spells numbers with it (without it, it drops the utterance)
    ],
    extras_require={"test": ["pytest>=8", "ruff>=0.5"]},
    package_data={"nemo_tl": ["assets/*.nemo"]},
)
