"""medshift_fast.flow"""
