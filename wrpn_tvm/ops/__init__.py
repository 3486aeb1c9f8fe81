"""wrpn_tvm.ops"""
