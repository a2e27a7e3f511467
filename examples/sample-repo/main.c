#include <stdio.h>

int add(int a, int b) { return a + b; }

#ifndef TESTING
int main(void) { printf("2 + 3 = %d\n", add(2, 3)); return 0; }
#else
int main(void) { return add(2, 3) == 5 ? 0 : 1; }
#endif
