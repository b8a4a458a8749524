"""medshift_fast.eval"""
