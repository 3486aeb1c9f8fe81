"""wrpn_tvm.nn"""
