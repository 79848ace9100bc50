/* limits: placeholder, being written. */
#include "limits.h"
