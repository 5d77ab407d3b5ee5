"""Packaging for EzPool (metadata lives here; pyproject.toml only names the build system)."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

setup(
    name="ezpool",
    version="0.1.0",
    description="Run a function over many tasks: in a loop, on every core, or on many machines.",
    long_description=(HERE / "README.rst").read_text(encoding="utf-8"),
    long_description_content_type="text/x-rst",
    license="Apache-2.0",
    packages=find_packages(include=["ezpool", "ezpool.*"]),
    package_data={"ezpool": ["py.typed"]},
    python_requires=">=3.9",
    install_requires=[
        "Pyro4>=4.82",
        "tqdm>=4.60",
        "cloudpickle>=2.0",
    ],
    extras_require={
        "test": [
            "pytest>=7",
            "pytest-timeout>=2.1",
            "hypothesis>=6",
            "ruff>=0.5",
            "mypy>=1.8",
            "types-tqdm",
            "cryptography>=41",
            # tests/test_notebook.py runs examples/distributed_notebook.ipynb in a real kernel.
            "nbclient>=0.7",
            "nbformat>=5.1",
            "ipykernel>=6",
            # ... and shows the default progress bar there as a widget (tests/test_notebook.py).
            "ipywidgets>=8",
            # tests/test_joblib.py and examples/sklearn_grid.py: the "ezpool" joblib backend.
            "joblib>=1.3",
            "scikit-learn>=1.3",
        ],
        "tls": ["cryptography>=41"],
        "docs": ["sphinx>=7", "furo>=2024.1.29"],
        "bench": [
            "matplotlib",
            "numpy",
            "loky",
            "joblib",
            "mpire",
            "dask[distributed]",
        ],
    },
    entry_points={"console_scripts": ["ezpool-serve = ezpool.serve:main"]},
    classifiers=[
        "License :: OSI Approved :: Apache Software License",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.9",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Topic :: System :: Distributed Computing",
    ],
)
