print("hello from the job")
print("second line")
