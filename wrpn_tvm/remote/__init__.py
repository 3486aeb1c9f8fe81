"""wrpn_tvm.remote"""
