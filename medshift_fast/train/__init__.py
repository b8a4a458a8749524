"""medshift_fast.train"""
