"""wrpn_tvm.lowering"""
