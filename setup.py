from setuptools import find_packages, setup

setup(
    name="mislas_hf",
    version="0.1.0",
    description="MiSLAS (Zhong et al., CVPR 2021): calibrated long-tailed image recognition for the Hugging Face ecosystem",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["mislas_hf", "mislas_hf.*"]),
    package_data={"mislas_hf": ["templates/*.md", "metrics/*/*.py", "metrics/*/*.md"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "transformers>=5.0",
        "datasets>=4.0",
        "accelerate>=1.0",
        "evaluate>=0.4",
        "huggingface_hub>=1.0",
        "safetensors>=0.4",
        "kornia>=0.7",
        "matplotlib>=3.7",
        "numpy>=1.24",
        "pillow>=10.0",
        "psutil>=5.9",
        "pyyaml>=6.0",
    ],
    extras_require={
        "timm": ["timm>=1.0"],  # timm backbones (TimmWrapperModel) and `mislas-convert --timm_checkpoint`
        "dev": ["pytest>=8", "torchmetrics>=1.3", "timm>=1.0"],
    },
    entry_points={
        "console_scripts": [
            "mislas-train = mislas_hf.scripts.train:cli",
            "mislas-evaluate = mislas_hf.scripts.evaluate:cli",
            "mislas-calibrate = mislas_hf.scripts.calibrate:cli",
            "mislas-convert = mislas_hf.convert:main",
        ]
    },
)
