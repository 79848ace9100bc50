/* net: placeholder, being written. */
#pragma once
