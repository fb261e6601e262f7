// exec_nop.cc: the program runtime_bench's exec figure starts: it returns.
int main() { return 0; }
