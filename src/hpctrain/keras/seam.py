"""placeholder"""
def install(): pass
def use_engine(enabled=True): pass
