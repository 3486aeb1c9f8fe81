from setuptools import find_packages, setup

setup(
    name="wrpn-tvm",
    version="0.1.0",
    description="Train WRPN (wide reduced-precision) networks and compile them to tuned bit-serial kernels with Apache TVM",
    python_requires=">=3.10",
    # The shipped tuning logs and committed benchmark results travel inside the package
    # (wrpn_tvm/resources.py finds them there, or in a checkout).
    packages=find_packages(include=["wrpn_tvm", "wrpn_tvm.*", "schedules", "schedules.*"])
    + ["wrpn_tvm.tuning_logs", "wrpn_tvm.benchmark_results"],
    package_dir={"wrpn_tvm.tuning_logs": "tuning_logs", "wrpn_tvm.benchmark_results": "benchmarks/results"},
    package_data={"wrpn_tvm.tuning_logs": ["README.md", "*/README.md", "*/database_*.json"],
                  "wrpn_tvm.benchmark_results": ["*.md", "*.json", "*.png"]},
    install_requires=[
        # 0.1.15.x segfaults in tvm.ir.save_json (and so in every MetaSchedule database write).
        "apache-tvm==0.27.0.post1",
        "apache-tvm-ffi==0.1.14.post1",
        # The CPU build that lies on the development machines' disk; a bare `torch` pulls CUDA.
        "torch==2.13.0",
        "numpy>=1.26,<3",
        "xgboost-cpu>=2.0",
        "psutil>=5.9",
        "cloudpickle>=2.2",
        "tornado>=6.3",
        "scipy>=1.11",
        "scikit-learn>=1.3",
        "mlxtend>=0.23",
        "matplotlib>=3.7",
    ],
    # brevitas: tests import Brevitas-trained models (it leaves torch alone, pins setuptools < 81).
    extras_require={"test": ["pytest>=8", "pytest-timeout>=2.2", "hypothesis>=6.100", "brevitas==0.13.4"]},
    entry_points={"console_scripts": ["wrpn-tvm=wrpn_tvm.cli:main"]},
)
