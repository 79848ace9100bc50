/* maillog: placeholder, being written. */
#include "maillog.h"
