/* window: placeholder, being written. */
#include "window.h"
