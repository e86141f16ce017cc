def check():
    raise ValueError("boom")


check()
