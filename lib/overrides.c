/* overrides: placeholder, being written. */
#include "overrides.h"
