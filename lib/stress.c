/* stress: placeholder, being written. */
#include "stress.h"
