/* net: placeholder, being written. */
#include "net.h"
