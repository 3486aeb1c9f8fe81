"""wrpn_tvm.tuning"""
