/* baseline: placeholder, being written. */
#include "baseline.h"
