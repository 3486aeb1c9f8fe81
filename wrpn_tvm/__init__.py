"""wrpn-tvm: train WRPN (wide reduced-precision) networks and compile them to bit-serial kernels with TVM."""

__version__ = "0.1.0"
