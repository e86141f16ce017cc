for n in range(50000):
    print("line", n)
print("LAST LINE")
