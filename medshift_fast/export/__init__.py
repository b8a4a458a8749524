"""medshift_fast.export"""
