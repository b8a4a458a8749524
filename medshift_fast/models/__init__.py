"""medshift_fast.models"""
