"""medshift_fast.data"""
